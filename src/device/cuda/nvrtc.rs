//! NVRTC: the run-time compiler of kernels/*.cu, loaded dynamically.

use super::unavailable;
use crate::device::gpu::Family;
use crate::error::{Error, Result};

/// Whether NVRTC can be loaded; `BackendUnavailable` naming the library otherwise.
pub fn nvrtc_available() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names; nothing is called.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(unavailable(
            "NVRTC (libnvrtc.so) was not found on the library path; install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and add its lib/ to LD_LIBRARY_PATH",
        ))
    }
}

/// A kernel family compiled by NVRTC for one architecture.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The PTX, which the driver can JIT for this or a newer architecture.
    pub ptx: String,
    /// The CUBIN for the architecture (`sm_XY`), loaded without a JIT and under CUDA's
    /// minor-version compatibility, so an NVRTC newer than the driver still works; `None` when
    /// NVRTC produced none (a virtual `compute_XY` target).
    pub cubin: Option<Vec<u8>>,
}

/// `family` compiled by NVRTC for `arch` (e.g. `"sm_90"`), both dtypes. A compile error is
/// [`Error::Device`] carrying the file name and NVRTC's log.
pub fn compile(family: Family, arch: &str) -> Result<Compiled> {
    compile_source(family.file(), &family.cuda_source(), arch)
}

/// An NVRTC program, destroyed when dropped.
struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed only here.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

/// The CUDA C++ `source` (named `file` in messages) compiled by NVRTC for `arch`.
pub fn compile_source(file: &str, source: &str, arch: &str) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CString, c_char};
    nvrtc_available()?;
    let fail = |reason: String| Error::Device {
        backend: "cuda",
        reason: format!("NVRTC cannot compile `{file}` for {arch}:\n{reason}"),
    };
    let text = |bytes: Vec<c_char>| -> String {
        let bytes: Vec<u8> = bytes.into_iter().map(|c| c as u8).take_while(|&b| b != 0).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let src = CString::new(source).map_err(|_| fail("the source holds a NUL byte".into()))?;
    let name = CString::new(file).map_err(|_| fail("the file name holds a NUL byte".into()))?;
    // Declared after `src` and `name`, so dropped before them: NVRTC may refer to both.
    let program = Program(result::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?);
    let options = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    // SAFETY: `program.0` is a live program from `create_program` (destroyed only on drop).
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program.0) }.map_or_else(|_| format!("{e:?}"), text);
        return Err(fail(log));
    }
    // SAFETY: as above, and the program compiled.
    let ptx = text(unsafe { result::get_ptx(program.0) }.map_err(|e| fail(format!("reading the PTX: {e:?}")))?);
    let mut size = 0usize;
    // SAFETY: as above; `size` is a live local.
    let sized = unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) };
    let cubin = (sized == sys::nvrtcResult::NVRTC_SUCCESS && size > 0)
        .then(|| {
            let mut bytes = vec![0u8; size];
            // SAFETY: as above; `bytes` holds the `size` bytes NVRTC reported.
            let got = unsafe { sys::nvrtcGetCUBIN(program.0, bytes.as_mut_ptr().cast()) };
            (got == sys::nvrtcResult::NVRTC_SUCCESS).then_some(bytes)
        })
        .flatten();
    Ok(Compiled { ptx, cubin })
}
