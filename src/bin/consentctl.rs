//! `consentctl`: see `consentd::ctl`.
fn main() {
    std::process::exit(consentd::ctl::main());
}
