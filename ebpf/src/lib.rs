#![no_std]
// Exists so that the agent can name this crate as a build dependency (cargo then rebuilds the
// agent when the kernel program changes). The program itself is src/main.rs.
