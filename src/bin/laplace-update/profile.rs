//! `profile`: every kernel's time, throughput and fraction of the device's measured peak.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use laplace_update::profile::{Sizes, Work, gemm_peak, kernel_cases};
use laplace_update::{Device, Error, Result, Scalar};

use super::{DTypeArg, DeviceArg, select_device};

#[derive(Args, Clone)]
pub struct ProfileArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Sizes `D,K,N,m`: features, classes, samples of the accumulation and prediction kernels,
    /// new samples of the update kernels (P = K·D).
    #[arg(long, default_value = "768,10,10000,100")]
    sizes: String,
    /// Element type.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Timed runs per kernel (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Side n of the square GEMM whose throughput is the peak.
    #[arg(long, default_value_t = 2048)]
    peak_size: usize,
    /// Comma-separated kernel families to run (default: all).
    #[arg(long, default_value = "")]
    kernels: String,
    /// Also write the table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    let sizes = Sizes::parse(&args.sizes)?;
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| match args.dtype {
        DTypeArg::F32 => profile_as::<f32>(d, sizes, args),
        DTypeArg::F64 => profile_as::<f64>(d, sizes, args),
    })?;
    // On CUDA, the library's gemm and SYRK beside cuBLAS's, when cuBLAS loads.
    #[cfg(feature = "cuda")]
    if let laplace_update::AnyDevice::Cuda(gpu) = &device
        && !gpu.uses_cublas()
    {
        let options = laplace_update::CudaOptions { cublas: true };
        match laplace_update::CudaDevice::with_options(0, &options) {
            Ok(blas) => {
                println!("\nthe same products through cuBLAS:");
                let only = ProfileArgs {
                    kernels: "gemm,weighted_syrk".into(),
                    csv: args.csv.as_ref().map(|p| p.with_extension("cublas.csv")),
                    ..args.clone()
                };
                match args.dtype {
                    DTypeArg::F32 => profile_as::<f32>(&blas, sizes, &only)?,
                    DTypeArg::F64 => profile_as::<f64>(&blas, sizes, &only)?,
                }
            }
            Err(e) => println!("\ncuBLAS: not run ({e})"),
        }
    }
    Ok(())
}

fn profile_as<T: Scalar>(device: &impl Device, sizes: Sizes, args: &ProfileArgs) -> Result<()> {
    println!("device: {} ({})", device.name(), T::DTYPE.name());
    let peak = gemm_peak::<_, T>(device, args.peak_size)?;
    let n = args.peak_size;
    println!(
        "peak: {:.1} GFLOP/s, measured with this device's gemm on {n}x{n}x{n} (median of 3)",
        peak / 1e9
    );
    let only: Vec<&str> = args
        .kernels
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut cases = kernel_cases::<_, T>(device, sizes, &only)?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .map_err(|e| Error::invalid("progress", e.to_string()))?,
    );
    let mut rows = Vec::new();
    for case in &mut cases {
        bar.set_message(case.family);
        let t = case.time(args.repeats)?.as_secs_f64();
        let (rate, unit, fraction) = match case.work {
            Work::Flops(f) => (f / t / 1e9, "GFLOP/s", Some(f / t / peak)),
            Work::Bytes(b) => (b / t / 1e9, "GB/s", None),
        };
        rows.push((case.family, case.shape.clone(), t * 1e3, rate, unit, fraction));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "\n{:<26} {:<28} {:>11} {:>12} {:>9} {:>8}",
        "kernel", "shape", "time ms", "throughput", "unit", "of peak"
    );
    for (family, shape, ms, rate, unit, fraction) in &rows {
        let share = fraction.map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0));
        println!("{family:<26} {shape:<28} {ms:>11.3} {rate:>12.2} {unit:>9} {share:>8}");
    }
    if let Some(path) = &args.csv {
        let mut text = String::from("kernel,shape,time_ms,throughput,unit,fraction_of_peak\n");
        for (family, shape, ms, rate, unit, fraction) in &rows {
            text.push_str(&format!(
                "{family},\"{shape}\",{ms:.4},{rate:.3},{unit},{}\n",
                fraction.map_or(String::new(), |f| format!("{f:.4}"))
            ));
        }
        std::fs::write(path, text).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
