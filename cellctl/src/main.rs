//! `cellctl`: see the crate docs and README.md.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("cellctl: not built yet");
    std::process::exit(2);
}
