//! Gives the shared library its soname, so that programs linked with `-ltutti` record
//! `libtutti.so.0` (the ABI version; bumped only when the ABI breaks) and find the
//! installed `libtutti.so.0`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtutti.so.0");
}
