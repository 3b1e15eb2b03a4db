//! The `pgprovider` command. All logic lives in the library, `pgprovider_cli::main`.

fn main() -> std::process::ExitCode {
    pgprovider_cli::main()
}
