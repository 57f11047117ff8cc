//! `tern`: the command-line front end of the Tern SMTP toolkit.

fn main() -> std::process::ExitCode {
    eprintln!("tern: not yet: the server is being built");
    std::process::ExitCode::from(69)
}
