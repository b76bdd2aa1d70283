//! The FFI boundary: every raw pointer from C is checked and turned into a Rust value here,
//! every entry runs under `catch_unwind`, and failures become a code plus a thread-local
//! detail message (`tutti_last_error`). The only `unsafe` of the crate besides the callback
//! call lives in this module.

use crate::{State, TuttiClient, TuttiEvent, TuttiJoinOptions, TUTTI_ERR_BUSY, TUTTI_ERR_INTERNAL};
use crate::{TUTTI_ERR_INVALID, TUTTI_ERR_UNSUPPORTED, TUTTI_OK};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Largest `tutti_join_options_t.size` taken: a struct that grew this much is a bug.
const MAX_OPTIONS_SIZE: u32 = 4096;

/// Why a call failed: its code and what to tell `tutti_last_error`.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: i32,
    pub detail: Detail,
}

/// Static details cost nothing on hot paths (`BACK_PRESSURED`, `AGAIN`).
#[derive(Debug)]
pub(crate) enum Detail {
    Static(&'static CStr),
    Owned(String),
}

impl Fail {
    pub fn new(code: i32, detail: &'static CStr) -> Fail {
        Fail {
            code,
            detail: Detail::Static(detail),
        }
    }

    pub fn text(code: i32, detail: impl Into<String>) -> Fail {
        Fail {
            code,
            detail: Detail::Owned(detail.into()),
        }
    }

    pub fn null(what: &str) -> Fail {
        Fail::text(TUTTI_ERR_INVALID, format!("{what} is NULL"))
    }
}

enum LastError {
    Static(&'static CStr),
    Owned(CString),
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const { RefCell::new(LastError::Static(c"")) };
}

fn record(detail: Detail) {
    let last = match detail {
        Detail::Static(s) => LastError::Static(s),
        Detail::Owned(s) => LastError::Owned(
            CString::new(s.replace('\0', " ")).unwrap_or_else(|_| c"(unprintable)".to_owned()),
        ),
    };
    LAST_ERROR.with(|cell| *cell.borrow_mut() = last);
}

/// The thread's last detail message (valid until the next failure on this thread: the
/// string is only replaced, never freed otherwise, while the thread lives).
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|cell| match &*cell.borrow() {
        LastError::Static(s) => s.as_ptr(),
        LastError::Owned(s) => s.as_ptr(),
    })
}

/// Runs an entry point: a panic becomes `TUTTI_ERR_INTERNAL`, a failure its code.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Fail>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => TUTTI_OK,
        Ok(Err(fail)) => {
            let code = fail.code;
            record(fail.detail);
            code
        }
        Err(_) => {
            record(Detail::Static(c"internal error in libtutti (a panic, caught)"));
            TUTTI_ERR_INTERNAL
        }
    }
}

/// Clears the client's busy flag when the entry returns or unwinds.
struct BusyGuard<'a>(&'a std::cell::Cell<bool>);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Runs an entry point on a client: checks the pointer, refuses re-entry from the client's
/// own callback, and poisons the client if `f` panics (its state may be half-updated).
pub(crate) fn with_client(client: *const TuttiClient, f: impl FnOnce(&mut State) -> Result<(), Fail>) -> i32 {
    guard(|| {
        // SAFETY: the caller passes NULL or a pointer from tutti_connect not yet closed
        // (header contract); NULL is refused here. Only a shared reference is made: the
        // mutable state is behind the UnsafeCell, reached below once `busy` is ours.
        let handle = unsafe { client.as_ref() }.ok_or_else(|| Fail::null("client"))?;
        if handle.poisoned.get() {
            return Err(Fail::new(
                TUTTI_ERR_INTERNAL,
                c"this client hit an internal error earlier and is unusable: close it",
            ));
        }
        if handle.busy.replace(true) {
            return Err(Fail::new(
                TUTTI_ERR_BUSY,
                c"called from this client's own event callback",
            ));
        }
        let _busy = BusyGuard(&handle.busy);
        // SAFETY: `busy` was false and is now true until this call returns, so this is the
        // only live reference to the state: a client is used by one thread at a time
        // (header contract) and a re-entrant call from a callback stops at the check above.
        let state = unsafe { &mut *handle.state.get() };
        match catch_unwind(AssertUnwindSafe(|| f(state))) {
            Ok(result) => result,
            Err(_) => {
                handle.poisoned.set(true);
                Err(Fail::new(
                    TUTTI_ERR_INTERNAL,
                    c"internal error in libtutti (a panic, caught): the client is unusable, close it",
                ))
            }
        }
    })
}

/// Takes back a client from `tutti_close`: None for NULL, Err if it is in use.
pub(crate) fn take_client(client: *mut TuttiClient) -> Result<Option<Box<TuttiClient>>, Fail> {
    if client.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-NULL pointer from tutti_connect not yet closed (header contract).
    let busy = unsafe { &*client }.busy.get();
    if busy {
        return Err(Fail::new(
            TUTTI_ERR_BUSY,
            c"tutti_close from this client's own event callback",
        ));
    }
    // SAFETY: the pointer came from Box::into_raw in tutti_connect, is not in use (busy is
    // false, one thread at a time), and the caller gives up ownership with this call.
    Ok(Some(unsafe { Box::from_raw(client) }))
}

/// Checks an out pointer (non-NULL and aligned) before any work is done.
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> Result<OutPtr<T>, Fail> {
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    if !ptr.is_aligned() {
        return Err(Fail::text(TUTTI_ERR_INVALID, format!("{what} is misaligned")));
    }
    Ok(OutPtr(ptr))
}

/// A checked out pointer; written once the call has succeeded.
pub(crate) struct OutPtr<T>(*mut T);

impl<T> OutPtr<T> {
    pub fn write(&self, value: T) {
        // SAFETY: non-NULL and aligned (out_ptr); the caller gives a pointer valid for a
        // write of T (header contract). `write` does not read or drop the old contents,
        // which may be uninitialised.
        unsafe { self.0.write(value) }
    }
}

/// A borrowed NUL-terminated string.
pub(crate) fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a CStr, Fail> {
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller passes a NUL-terminated string that stays valid and
    // unchanged for the call (header contract); the borrow does not outlive the call.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// Borrowed bytes: `len` bytes at `ptr`, or nothing when `len` is 0 (`ptr` may be NULL).
pub(crate) fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Fail::text(
            TUTTI_ERR_INVALID,
            format!("{what} is NULL with a length of {len}"),
        ));
    }
    if len > isize::MAX as usize {
        return Err(Fail::text(
            TUTTI_ERR_INVALID,
            format!("length {len} is too large"),
        ));
    }
    // SAFETY: non-NULL, len <= isize::MAX, and the caller passes `len` readable bytes that
    // stay valid for the call (header contract); the borrow does not outlive the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Reads a caller's join options, of whatever version it was compiled with: fields this
/// version does not know must be zero (then they ask for nothing).
pub(crate) fn join_options(ptr: *const TuttiJoinOptions) -> Result<TuttiJoinOptions, Fail> {
    let known = std::mem::size_of::<TuttiJoinOptions>() as u32;
    if !ptr.is_aligned() {
        return Err(Fail::new(TUTTI_ERR_INVALID, c"join options are misaligned"));
    }
    // SAFETY: non-NULL (checked by the caller of this function) and aligned; every version
    // of the struct starts with the u32 `size`, which the caller initialised.
    let size = unsafe { ptr.cast::<u32>().read() };
    if size < known {
        return Err(Fail::text(
            TUTTI_ERR_INVALID,
            format!("join options size {size}: set it to sizeof(tutti_join_options_t) ({known})"),
        ));
    }
    if size > MAX_OPTIONS_SIZE {
        return Err(Fail::text(
            TUTTI_ERR_INVALID,
            format!("join options size {size} is over {MAX_OPTIONS_SIZE}"),
        ));
    }
    // SAFETY: the caller's struct is at least `known` bytes (its `size` says so) and
    // aligned; TuttiJoinOptions is plain u32 fields, valid for any bits.
    let options = unsafe { ptr.read() };
    // SAFETY: the caller's struct spans `size` bytes (its own sizeof), all initialised.
    let rest =
        unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(known as usize), (size - known) as usize) };
    if rest.iter().any(|&b| b != 0) {
        return Err(Fail::text(
            TUTTI_ERR_UNSUPPORTED,
            format!(
                "join options from a newer tutti.h set fields this libtutti does not know (it reads {known} bytes)"
            ),
        ));
    }
    Ok(options)
}

/// Calls the application's event callback.
pub(crate) fn call_back(
    callback: unsafe extern "C" fn(*const TuttiEvent, *mut c_void),
    event: &TuttiEvent,
    user: *mut c_void,
) {
    // SAFETY: the caller passed a function of this type, and `user` as it wants it back
    // (header contract); `event` lives for the call. A C function cannot unwind into Rust
    // (an `extern "C"` call aborts on unwinding), and a re-entrant call on this client
    // stops at the busy check.
    unsafe { callback(event, user) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TUTTI_MODE_BIMODAL;

    fn last() -> String {
        // SAFETY: last_error returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_panic_becomes_internal_and_a_failure_its_code_and_detail() {
        assert_eq!(guard(|| panic!("boom")), TUTTI_ERR_INTERNAL);
        assert!(last().contains("panic"), "{}", last());
        assert_eq!(
            guard(|| Err(Fail::text(TUTTI_ERR_INVALID, "the detail\0here"))),
            TUTTI_ERR_INVALID
        );
        assert_eq!(last(), "the detail here");
        assert_eq!(guard(|| Ok(())), TUTTI_OK);
        assert_eq!(
            last(),
            "the detail here",
            "success leaves the last failure's detail"
        );
    }

    #[test]
    fn a_null_client_is_invalid() {
        assert_eq!(with_client(std::ptr::null(), |_| Ok(())), TUTTI_ERR_INVALID);
        assert!(take_client(std::ptr::null_mut()).unwrap().is_none());
    }

    #[test]
    fn bytes_and_strings_are_checked() {
        assert!(bytes(std::ptr::null(), 0, "data").unwrap().is_empty());
        assert_eq!(
            bytes(std::ptr::null(), 3, "data").unwrap_err().code,
            TUTTI_ERR_INVALID
        );
        let data = [1u8, 2, 3];
        assert_eq!(bytes(data.as_ptr(), 3, "data").unwrap(), &data);
        assert_eq!(
            c_str(std::ptr::null(), "name").unwrap_err().code,
            TUTTI_ERR_INVALID
        );
        assert_eq!(
            out_ptr(std::ptr::null_mut::<u64>(), "out").err().unwrap().code,
            TUTTI_ERR_INVALID
        );
        let mut word = [0u64; 2];
        let misaligned = (word.as_mut_ptr() as *mut u8).wrapping_add(1).cast::<u64>();
        assert_eq!(out_ptr(misaligned, "out").err().unwrap().code, TUTTI_ERR_INVALID);
    }

    /// A caller compiled against a newer tutti.h, with two more fields.
    #[repr(C)]
    struct Newer {
        base: TuttiJoinOptions,
        extra: [u32; 2],
    }

    #[test]
    fn join_options_of_other_versions() {
        let base = TuttiJoinOptions {
            size: 16,
            rights: 2,
            mode: TUTTI_MODE_BIMODAL,
            flags: 0,
        };
        assert_eq!(join_options(&base).unwrap(), base);
        let mut newer = Newer {
            base: TuttiJoinOptions { size: 24, ..base },
            extra: [0, 0],
        };
        assert_eq!(
            join_options((&raw const newer).cast()).unwrap().rights,
            2,
            "unknown zero fields ask nothing"
        );
        newer.extra[1] = 7;
        assert_eq!(
            join_options((&raw const newer).cast()).unwrap_err().code,
            TUTTI_ERR_UNSUPPORTED
        );
        let short = TuttiJoinOptions { size: 8, ..base };
        assert_eq!(join_options(&short).unwrap_err().code, TUTTI_ERR_INVALID);
        let huge = TuttiJoinOptions {
            size: 1 << 20,
            ..base
        };
        assert_eq!(join_options(&huge).unwrap_err().code, TUTTI_ERR_INVALID);
    }
}
