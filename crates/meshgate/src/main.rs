//! meshgate
fn main() {}
