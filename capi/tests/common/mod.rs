//! Shared by the C API tests: building C programs against libtutti (as the build of this
//! crate left it in the target directory) and running a tuttid on a socket of their own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What rustc says a static libtutti needs (`--print native-static-libs`).
pub const STATIC_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// The crate's directory (capi/).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/, where cargo puts tuttid.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A fresh directory of this test's own under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tutti-capi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// target/<profile>/deps/, where the build of this test put libtutti.so and libtutti.a
/// (`cargo build` also copies them up to target/<profile>/, but `cargo test` does not: the
/// copies there can be stale).
pub fn deps_dir() -> PathBuf {
    target_dir().join("deps")
}

/// tuttid beside the test; built with cargo if this test run did not build it.
pub fn tuttid() -> PathBuf {
    let path = target_dir().join("tuttid");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "tutti-daemon", "--bin", "tuttid"])
            .current_dir(crate_dir())
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build -p tutti-daemon failed");
    }
    assert!(path.exists(), "{} missing after building it", path.display());
    path
}

/// A directory holding libtutti.so as the linker and loader look for it (the library's
/// soname is libtutti.so.0, as installed).
pub fn lib_dir(dir: &Path) -> PathBuf {
    let so = deps_dir().join("libtutti.so");
    assert!(
        so.exists(),
        "{} missing: cargo builds it with this crate",
        so.display()
    );
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    for name in ["libtutti.so.0", "libtutti.so"] {
        let _ = std::fs::remove_file(lib.join(name));
        std::os::unix::fs::symlink(&so, lib.join(name)).unwrap();
    }
    lib
}

/// Compiles one C file against tutti.h and libtutti (shared, or static with `static_lib`),
/// warnings as errors; returns the program.
pub fn compile(source: &Path, dir: &Path, name: &str, static_lib: bool) -> PathBuf {
    let out = dir.join(name);
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
        "-g",
    ])
    .arg("-I")
    .arg(crate_dir().join("include"))
    .arg(source)
    .arg("-o")
    .arg(&out);
    if static_lib {
        cc.arg(deps_dir().join("libtutti.a")).args(STATIC_LIBS);
    } else {
        let lib = lib_dir(dir);
        cc.arg("-L")
            .arg(&lib)
            .arg("-ltutti")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let result = cc
        .output()
        .expect("run cc (a C compiler is needed for these tests)");
    assert!(
        result.status.success(),
        "cc {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// A tuttid on a socket in its own directory (backoff idle, not pinned); killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("tuttid.sock");
        let child = Command::new(tuttid())
            .env("TUTTI_SOCKET", &socket)
            .args(["--no-pin", "--idle", "backoff"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, socket };
        assert!(
            eventually(Duration::from_secs(20), || daemon.socket.exists()),
            "tuttid did not start"
        );
        daemon
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child to exit, at most `timeout` (then kills it and fails).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let mut status = None;
    let exited = eventually(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the C program did not exit within {timeout:?}");
    }
    status.unwrap()
}
