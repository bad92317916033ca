//! Compiles the variadic half of the host (C: `switch_log_printf` and the API
//! stream's `write_function`) and exports the executable's symbols, so the
//! dlopen'ed module resolves every `switch_*` function from us.

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    cc::Build::new()
        .file("src/shim.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("fs_testhost_shim");
    // Every global symbol of the executable goes into its dynamic symbol table.
    println!("cargo:rustc-link-arg-bins=-rdynamic");
}
