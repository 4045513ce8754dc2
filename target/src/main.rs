//! The `tandem` binary.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("tandem: not built yet");
    std::process::exit(2);
}
