//! Classic tracepoints need tracefs; mount it when it is missing.

use std::{ffi::CString, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at /sys/kernel/tracing (or the old debugfs location), mounting
/// it if needed. Returns the directory that holds `events/`.
pub fn ensure_tracefs() -> Result<&'static str, String> {
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        match std::fs::metadata(Path::new(dir).join("events")) {
            Ok(m) if m.is_dir() => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!(
                    "tracefs at {dir} is not readable by this user: run as root, or grant \
                     CAP_DAC_READ_SEARCH"
                ));
            }
            _ => {}
        }
    }
    if !Path::new(TRACEFS).is_dir() {
        return Err(format!(
            "{TRACEFS} does not exist: this kernel has no tracefs (CONFIG_TRACING), so the \
             task/sched/kmem/oom tracepoints cannot be attached"
        ));
    }
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, dst, fs) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {err}. Mount it yourself \
             (`mount -t tracefs tracefs {TRACEFS}`), or in a container mount the host's \
             {TRACEFS} into it"
        ));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(TRACEFS)
}
