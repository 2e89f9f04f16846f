//! The `awork-gateway` binary; everything lives in the library (`cli`). Its allocator is
//! mimalloc: see the note on the dependency in Cargo.toml.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    awork_gateway::cli::main()
}
