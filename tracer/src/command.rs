//! Starting the traced command (`record -- CMD`): forked, then held before exec until the
//! tracer has put its pid in the kernel filter, so that nothing it does is missed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context as _;

/// A child held before exec until the tracer has put it under trace, so that nothing it does
/// is missed. The gate is a pipe the child blocks on between fork and exec. (std's
/// `Command::spawn` cannot do this: it waits for the exec before returning the pid.)
pub struct Gate {
    write: OwnedFd,
}

pub struct Child {
    pub pid: u32,
}

pub fn spawn_gated(cmd: &[String]) -> anyhow::Result<(Child, Gate)> {
    use std::ffi::CString;
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("the command has an argument with a NUL byte")?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let msg = format!("tracer: cannot run `{}`\n", cmd[0]);
    let mut fds = [0; 2];
    // SAFETY: valid out-array; O_CLOEXEC keeps the fds out of the exec'd program.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the start gate pipe");
    }
    // SAFETY: fresh fds we own.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only calls async-signal-safe functions (close, read, execvp, write,
    // _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        unsafe {
            libc::close(write.as_raw_fd());
            let mut b = 0u8;
            // A byte or EOF (tracer gone): go on either way.
            while libc::read(read.as_raw_fd(), (&mut b as *mut u8).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::execvp(argv[0], argv.as_ptr());
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    drop(read);
    Ok((Child { pid: pid as u32 }, Gate { write }))
}

impl Gate {
    pub fn open(self) {
        let b = 1u8;
        // SAFETY: valid fd and buffer. A failure only means the child is already gone.
        unsafe { libc::write(self.write.as_raw_fd(), (&b as *const u8).cast(), 1) };
    }
}

impl Child {
    /// Waits for the child on a blocking thread; resolves to its status as a shell reports it
    /// (the exit code, or 128 + the signal that killed it).
    pub fn wait(&self) -> tokio::task::JoinHandle<std::io::Result<i32>> {
        let pid = self.pid as libc::pid_t;
        tokio::task::spawn_blocking(move || {
            let mut status = 0;
            loop {
                // SAFETY: valid out-pointer; the pid is our child.
                let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
                if rc == pid {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err);
                }
            }
            Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            })
        })
    }
}
