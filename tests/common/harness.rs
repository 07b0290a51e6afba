//! The harness of the backend suites (libtest-mimic): a backend that cannot start on this
//! machine shows its tests as ignored, with the reason, in the harness's own summary, and a
//! closing line says how many tests of the backend ran and how many were skipped. When
//! `LAPLACE_REQUIRE` names the backend, its unavailability is a failing test instead.

use libtest_mimic::{Arguments, Failed, Trial};

/// One test: its name, whether it needs the backend, and its body (which panics on failure).
pub struct Case {
    name: String,
    needs_backend: bool,
    body: Box<dyn FnOnce() + Send + 'static>,
}

/// A test that needs the backend.
pub fn case(name: impl Into<String>, body: impl FnOnce() + Send + 'static) -> Case {
    Case {
        name: name.into(),
        needs_backend: true,
        body: Box::new(body),
    }
}

/// A test that runs whether the backend starts or not (it checks how its absence is reported).
pub fn always(name: impl Into<String>, body: impl FnOnce() + Send + 'static) -> Case {
    Case {
        needs_backend: false,
        ..case(name, body)
    }
}

/// Runs `cases` of `backend`, whose start `probe` reported, under the command line's test
/// arguments (filters, `--nocapture`, `--list` for nextest, ...).
pub fn run<D>(backend: &str, probe: laplace_update::Result<D>, cases: Vec<Case>) -> std::process::ExitCode {
    let args = Arguments::from_args();
    let unavailable = probe.err().map(|e| e.to_string());
    let required = super::required(backend);
    let mut trials: Vec<Trial> = Vec::with_capacity(cases.len() + 1);
    if let (Some(reason), true) = (&unavailable, required) {
        let message = format!("{backend} is required by LAPLACE_REQUIRE but unavailable: {reason}");
        trials.push(Trial::test(format!("{backend}_is_available"), move || {
            Err(Failed::from(message))
        }));
    }
    let skipped = cases
        .iter()
        .filter(|c| c.needs_backend && unavailable.is_some())
        .count();
    for c in cases {
        let ignored = c.needs_backend && unavailable.is_some();
        let body = c.body;
        let trial = Trial::test(c.name, move || {
            body();
            Ok(())
        });
        trials.push(match ignored {
            true => trial.with_ignored_flag(true).with_kind("skipped"),
            false => trial,
        });
    }
    if let Some(reason) = &unavailable {
        eprintln!("SKIPPED {backend}: {reason} ({skipped} tests shown as ignored)");
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if !args.list {
        eprintln!(
            "{backend}: {} tests ran, {} skipped{}",
            conclusion.num_passed + conclusion.num_failed,
            conclusion.num_ignored,
            unavailable.map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    conclusion.exit_code()
}

/// Tests named after their functions, `needs` the backend (`case`) or not (`always`):
/// `tests!(case: a, b)`.
#[macro_export]
macro_rules! tests {
    ($kind:ident: $($f:ident),+ $(,)?) => {
        vec![$($crate::common::harness::$kind(stringify!($f), $f)),+]
    };
}

/// The posterior, weight-space and kernel suites of one backend (`make` starts its device) for
/// each element type, optionally with the drift test's size (see `posterior_suite!`).
#[macro_export]
macro_rules! backend_suites {
    ($backend:literal, $make:expr, $($t:ident),+) => {
        $crate::backend_suites!($backend, $make, drift(64, 10), $($t),+)
    };
    ($backend:literal, $make:expr, drift($d:expr, $chunks:expr), $($t:ident),+) => {{
        let mut cases = $crate::posterior_suite!("posterior", $backend, $make, drift($d, $chunks), $($t),+);
        cases.extend($crate::complete_suite!("complete", $backend, $make, $($t),+));
        cases.extend($crate::kernel_suite!("kernels", $backend, $make, $($t),+));
        cases
    }};
}
