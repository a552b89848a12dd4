//! Issue 11, item 9, against real wasmtime: the memory cap is one total across all of an instance's
//! linear memories, whether the memories are declared that large or grown to it during a call.
//!
//! The components are built here: a core module with several memories and the router world's exports
//! (bodies that grow a memory or trap), embedded with the world from `plugins/wit` by `wit-component`.

use meshgate_plugin::types::Catalog;
use meshgate_plugin::{PluginError, PluginHost, RouterPlugin, Sandbox};
use std::path::Path;
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, MemorySection,
    MemoryType, Module, TypeSection, ValType,
};

const CAP: usize = 16 << 20;
const PAGE: u64 = 64 << 10;
/// 10 MiB in pages: one such memory fits the 16 MiB cap, two do not.
const TEN_MIB: u64 = (10 << 20) / PAGE;

/// A router-plugin component whose core module has one memory per entry of `pages` (initial size, in
/// pages). `gateway-routes` grows memory 1 by `grow` pages, then traps whatever the outcome: the host's
/// classification says whether the trap came from the cap.
fn component(pages: &[u64], grow: u64) -> Vec<u8> {
    let mut types = TypeSection::new();
    // Canonical ABI, flattened: gateway-routes takes 10 i32s (settings 2, catalog 6, datacenter 2),
    // sidecar-plan 15; both return a pointer to their result.
    types.ty().function(vec![ValType::I32; 10], [ValType::I32]);
    types.ty().function(vec![ValType::I32; 15], [ValType::I32]);
    types.ty().function(vec![ValType::I32; 4], [ValType::I32]); // cabi_realloc
    types.ty().function(vec![ValType::I32; 2], [ValType::I32]); // configure: settings 2
    let mut functions = FunctionSection::new();
    functions.function(0).function(1).function(2).function(3);
    let mut memories = MemorySection::new();
    for p in pages {
        memories.memory(MemoryType {
            minimum: *p,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
    }
    let mut exports = ExportSection::new();
    exports
        .export("gateway-routes", ExportKind::Func, 0)
        .export("sidecar-plan", ExportKind::Func, 1)
        .export("cabi_realloc", ExportKind::Func, 2)
        // Never called here: these tests load the plugin without configuring it.
        .export("configure", ExportKind::Func, 3)
        .export("memory", ExportKind::Memory, 0);
    let mut code = CodeSection::new();
    let mut routes = Function::new([]);
    routes
        .instruction(&Instruction::I32Const(i32::try_from(grow).expect("pages")))
        .instruction(&Instruction::MemoryGrow(1))
        .instruction(&Instruction::Drop)
        .instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End);
    let mut trap = Function::new([]);
    trap.instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End);
    // Every allocation at the same address: the arguments are lowered into memory 0 and never read.
    let mut realloc = Function::new([]);
    realloc
        .instruction(&Instruction::I32Const(1024))
        .instruction(&Instruction::End);
    code.function(&routes)
        .function(&trap)
        .function(&realloc)
        .function(&trap);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code);
    let mut bytes = module.finish();

    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/wit"))
        .expect("parse plugins/wit");
    let world = resolve
        .select_world(&[pkg], Some("router-plugin"))
        .expect("router-plugin world");
    wit_component::embed_component_metadata(
        &mut bytes,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed world");
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .expect("module")
        .validate(true)
        .encode()
        .expect("encode component")
}

fn load(host: &PluginHost, bytes: &[u8]) -> Result<RouterPlugin, PluginError> {
    let component = host.compile(bytes).expect("compile");
    let sandbox = Sandbox {
        memory: CAP,
        ..Sandbox::default()
    };
    host.router_from("memories".into(), component, sandbox)
}

fn routes(p: &mut RouterPlugin) -> PluginError {
    let catalog = Catalog {
        trust_domain: "11111111-2222-3333-4444-555555555555.consul".into(),
        instances: vec![],
        config_entries: vec![],
    };
    p.gateway_routes(&[], &catalog, "dc1")
        .expect_err("the test component always traps")
}

#[test]
fn memories_declared_over_the_cap_together_do_not_instantiate() {
    let host = PluginHost::new().expect("host");
    // One memory of 10 MiB (and a small second one) fits.
    assert!(load(&host, &component(&[TEN_MIB, 1], 0)).is_ok());
    // Two of 10 MiB each fit the cap one by one, not together.
    match load(&host, &component(&[TEN_MIB, TEN_MIB], 0)) {
        Err(e) => assert!(matches!(e, PluginError::Memory { .. }), "{e}"),
        Ok(_) => panic!("two 10 MiB memories instantiated under a 16 MiB cap"),
    }
    // Three of 6 MiB: 18 MiB in all.
    let six = (6 << 20) / PAGE;
    match load(&host, &component(&[six, six, six], 0)) {
        Err(e) => assert!(matches!(e, PluginError::Memory { .. }), "{e}"),
        Ok(_) => panic!("three 6 MiB memories instantiated under a 16 MiB cap"),
    }
}

#[test]
fn growing_a_second_memory_past_the_total_is_a_memory_cap_hit() {
    let host = PluginHost::new().expect("host");
    // Growing memory 1 by 1 MiB stays within the total: the trap is the component's own.
    let mut p = load(&host, &component(&[TEN_MIB, 1], 16)).expect("fits");
    let e = routes(&mut p);
    assert!(matches!(e, PluginError::Trap { .. }), "{e}");
    // Growing it by 10 MiB would make 20 MiB in all: refused by the cap.
    let mut p = load(&host, &component(&[TEN_MIB, 1], TEN_MIB)).expect("fits");
    let e = routes(&mut p);
    assert!(matches!(e, PluginError::Memory { .. }), "{e}");
    assert_eq!(e.reason(), "memory");
}
