//! Ctrl-C and SIGTERM end a run early but cleanly: the handler only raises a flag, every
//! measuring loop looks at it when it looks at the clock, and the run then unwinds through
//! the daemon guard (kill, wait, remove the temporary directory) like any other error.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Route SIGINT and SIGTERM to the flag.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // zeroed sigaction is a valid value (empty mask, no flags) that we then fill in.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Err once an interrupt was requested.
#[inline]
pub fn check() -> Result<(), String> {
    if REQUESTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}
