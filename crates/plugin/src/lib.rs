//! The Wasm plugin host: loads catalog and router plugins (WebAssembly components built for the worlds in
//! `plugins/wit`), runs them in a sandbox, and hands their answers to the control plane.
//!
//! # Sandbox
//! - **No ambient capability.** A plugin imports only the `host` interface; no WASI is linked. Each host
//!   function checks the plugin's [`Grants`]: files only under granted directories (after resolving
//!   symlinks and `..`), HTTP only to granted origins, environment only for granted keys.
//! - **Deadline.** Every call runs under an epoch deadline (default 1 s); a plugin that loops forever is
//!   interrupted.
//! - **Memory cap.** Linear memory may not grow beyond the cap (default 64 MiB).
//! - **Failure is contained.** A trap, a deadline or a memory-cap hit fails that one call with a typed
//!   [`PluginError`]; the instance is dropped and a fresh one is made on the next call. The caller keeps
//!   serving its last good table.
//!
//! Plugins run on the control thread only, never on a data-plane core.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

/// Host bindings for the `catalog-plugin` world (and the shared `types` and `host` interfaces).
pub mod catalog_world {
    #![allow(missing_docs)] // generated from plugins/wit, documented there
    wasmtime::component::bindgen!({
        world: "catalog-plugin",
        path: "../../plugins/wit",
    });
}

/// Host bindings for the `router-plugin` world.
pub mod router_world {
    #![allow(missing_docs)] // generated from plugins/wit, documented there
    wasmtime::component::bindgen!({
        world: "router-plugin",
        path: "../../plugins/wit",
        with: {
            "meshgate:plugin/types@0.2.0": crate::catalog_world::meshgate::plugin::types,
            "meshgate:plugin/host@0.2.0": crate::catalog_world::meshgate::plugin::host,
        },
    });
}

/// Host bindings for the `connection-hook` world.
pub mod hook_world {
    #![allow(missing_docs)] // generated from plugins/wit, documented there
    wasmtime::component::bindgen!({
        world: "connection-hook",
        path: "../../plugins/wit",
        with: {
            "meshgate:plugin/types@0.2.0": crate::catalog_world::meshgate::plugin::types,
            "meshgate:plugin/host@0.2.0": crate::catalog_world::meshgate::plugin::host,
        },
    });
}

pub use catalog_world::meshgate::plugin::types;

/// Default per-call deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default linear-memory cap, in bytes.
pub const DEFAULT_MEMORY_CAP: usize = 64 << 20;
/// Epoch tick: the deadline's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Timeout of a plugin's HTTP request (connect, and each read or write).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest file or HTTP body handed to a plugin, in bytes.
pub const MAX_READ: usize = 16 << 20;

/// The plugins built from `plugins/` and embedded in meshgate, by name.
pub const SHIPPED: [(&str, &[u8]); 4] = [
    (
        "file-catalog",
        include_bytes!(concat!(env!("OUT_DIR"), "/file_catalog.wasm")),
    ),
    (
        "consul-router",
        include_bytes!(concat!(env!("OUT_DIR"), "/consul_router.wasm")),
    ),
    (
        "export-control",
        include_bytes!(concat!(env!("OUT_DIR"), "/export_control.wasm")),
    ),
    (
        "sni-denylist",
        include_bytes!(concat!(env!("OUT_DIR"), "/sni_denylist.wasm")),
    ),
];

/// A deliberately misbehaving router plugin, for tests (see `plugins/testbed`).
#[doc(hidden)]
pub const TESTBED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testbed.wasm"));

/// What a plugin may reach.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Relative paths a plugin uses are resolved against this directory (the config file's).
    pub base: PathBuf,
    /// Directories the plugin may read (recursively).
    pub dirs: Vec<PathBuf>,
    /// HTTP origins (`http://host:port`) the plugin may GET.
    pub origins: Vec<String>,
    /// Environment variables the plugin may read.
    pub env: Vec<String>,
}

/// Limits of one plugin.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Linear-memory cap, in bytes.
    pub memory: usize,
    /// Capabilities.
    pub grants: Grants,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            memory: DEFAULT_MEMORY_CAP,
            grants: Grants::default(),
        }
    }
}

/// Why a plugin call failed. Each variant maps to a metrics label ([`PluginError::reason`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The component could not be read, compiled, linked or instantiated.
    #[error("plugin {plugin}: cannot load: {message}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin trapped (panicked, hit `unreachable`...).
    #[error("plugin {plugin}: trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
    },
    /// The call ran past its deadline.
    #[error("plugin {plugin}: ran past its {ms} ms deadline")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        ms: u128,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin {plugin}: hit its memory cap of {mib} MiB")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        mib: usize,
    },
    /// The plugin returned an error.
    #[error("plugin {plugin}: {message}")]
    Refused {
        /// Plugin name.
        plugin: String,
        /// Its message.
        message: String,
    },
    /// The plugin's answer is not acceptable (e.g. an invalid route table).
    #[error("plugin {plugin}: invalid answer: {message}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
}

impl PluginError {
    /// Stable metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "load",
            PluginError::Trap { .. } => "trap",
            PluginError::Deadline { .. } => "deadline",
            PluginError::Memory { .. } => "memory",
            PluginError::Refused { .. } => "error",
            PluginError::Invalid { .. } => "invalid",
        }
    }
}

/// Per-store state: the plugin's grants and its memory limiter.
pub struct State {
    plugin: String,
    grants: Grants,
    limiter: Limiter,
}

struct Limiter {
    cap: usize,
    denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl types::Host for State {}

impl catalog_world::meshgate::plugin::host::Host for State {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &self.plugin;
        match level {
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        }
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        let p = self.granted_path(&path)?;
        let meta = std::fs::metadata(&p).map_err(|e| format!("{path}: {e}"))?;
        if meta.len() > MAX_READ as u64 {
            return Err(format!("{path}: larger than {MAX_READ} bytes"));
        }
        std::fs::read(&p).map_err(|e| format!("{path}: {e}"))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<types::DirEntry>, String> {
        let p = self.granted_path(&path)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&p).map_err(|e| format!("{path}: {e}"))? {
            let entry = entry.map_err(|e| format!("{path}: {e}"))?;
            let Ok(meta) = entry.metadata() else { continue };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out.push(types::DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                size: meta.len(),
                modified_ms,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn http_get(&mut self, url: String) -> Result<types::HttpResponse, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let origin = format!("http://{authority}");
        if !self
            .grants
            .origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin)
        {
            return Err(format!("{origin} is not granted to plugin {}", self.plugin));
        }
        http_get(authority, path).map_err(|e| format!("{url}: {e}"))
    }

    fn get_env(&mut self, key: String) -> Option<String> {
        if self.grants.env.contains(&key) {
            std::env::var(&key).ok()
        } else {
            tracing::debug!(plugin = %self.plugin, key, "environment variable not granted");
            None
        }
    }
}

impl State {
    /// Resolves `path` (relative to the config's directory), then requires it inside a granted directory.
    fn granted_path(&self, path: &str) -> Result<PathBuf, String> {
        let raw = Path::new(path);
        let full = if raw.is_absolute() {
            raw.to_owned()
        } else {
            self.grants.base.join(raw)
        };
        let canonical = full.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        let allowed = self.grants.dirs.iter().any(|d| {
            let d = if d.is_absolute() {
                d.clone()
            } else {
                self.grants.base.join(d)
            };
            d.canonicalize().is_ok_and(|d| canonical.starts_with(d))
        });
        if allowed {
            Ok(canonical)
        } else {
            Err(format!(
                "{path} is not under a directory granted to plugin {}",
                self.plugin
            ))
        }
    }
}

fn http_get(authority: &str, path: &str) -> std::io::Result<types::HttpResponse> {
    use std::io::{Read, Write};
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    // HTTP/1.0: the server closes after the body, no chunked encoding to undo. One write: a server that
    // answers after its first read must see the whole request, or its close resets our read.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: meshgate\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_READ as u64 + 64 * 1024).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(types::HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Compiles components and ticks the epoch that enforces deadlines. One per process.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// A host with its epoch ticker thread.
    pub fn new() -> Result<PluginHost, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Load {
            plugin: "-".into(),
            message: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("meshgate-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Load {
                plugin: "-".into(),
                message: e.to_string(),
            })?;
        Ok(PluginHost {
            engine,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// Reads a plugin: a shipped name, or a path to a `.wasm` component.
    pub fn component(
        &self,
        name_or_path: &str,
        base: &Path,
    ) -> Result<(String, Component), PluginError> {
        let fail = |message: String| PluginError::Load {
            plugin: name_or_path.to_owned(),
            message,
        };
        if let Some((name, bytes)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            let c = Component::new(&self.engine, bytes).map_err(|e| fail(format!("{e:#}")))?;
            return Ok(((*name).to_owned(), c));
        }
        let path = base.join(name_or_path);
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(format!(
                "{}: {e} (not a shipped plugin either: {})",
                path.display(),
                SHIPPED.map(|(n, _)| n).join(", ")
            ))
        })?;
        let c = Component::new(&self.engine, &bytes)
            .map_err(|e| fail(format!("{}: {e:#}", path.display())))?;
        let name = path.file_stem().map_or_else(
            || name_or_path.to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        Ok((name, c))
    }

    fn loaded(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<Loaded, PluginError> {
        let mut linker = Linker::new(&self.engine);
        catalog_world::meshgate::plugin::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .and_then(|()| {
                catalog_world::meshgate::plugin::types::add_to_linker::<_, HasSelf<_>>(
                    &mut linker,
                    |s| s,
                )
            })
            .map_err(|e| PluginError::Load {
                plugin: name.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(Loaded {
            name,
            engine: self.engine.clone(),
            component,
            linker,
            sandbox,
        })
    }

    /// A catalog plugin.
    pub fn catalog(
        &self,
        name_or_path: &str,
        sandbox: Sandbox,
    ) -> Result<CatalogPlugin, PluginError> {
        let (name, component) = self.component(name_or_path, &sandbox.grants.base)?;
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = CatalogPlugin { loaded, live: None };
        p.instance()?; // fail now, at load time, if it does not fit the world
        Ok(p)
    }

    /// A router plugin.
    pub fn router(
        &self,
        name_or_path: &str,
        sandbox: Sandbox,
    ) -> Result<RouterPlugin, PluginError> {
        let (name, component) = self.component(name_or_path, &sandbox.grants.base)?;
        self.router_from(name, component, sandbox)
    }

    /// A router plugin from an already compiled component (tests, benchmarks).
    pub fn router_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<RouterPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = RouterPlugin { loaded, live: None };
        p.instance()?;
        Ok(p)
    }

    /// A connection hook from a compiled component; call once per core (each gets its own instance).
    pub fn hook_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<HookPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = HookPlugin { loaded, live: None };
        live(&p.loaded, &mut p.live, |s, c, l| {
            hook_world::ConnectionHook::instantiate(s, c, l)
        })?;
        Ok(p)
    }

    /// Compiles component bytes (tests, benchmarks).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        Component::new(&self.engine, bytes).map_err(|e| PluginError::Load {
            plugin: "-".into(),
            message: format!("{e:#}"),
        })
    }
}

struct Loaded {
    name: String,
    engine: Engine,
    component: Component,
    linker: Linker<State>,
    sandbox: Sandbox,
}

impl Loaded {
    fn store(&self) -> Store<State> {
        let mut store = Store::new(
            &self.engine,
            State {
                plugin: self.name.clone(),
                grants: self.sandbox.grants.clone(),
                limiter: Limiter {
                    cap: self.sandbox.memory,
                    denied: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        store
    }

    fn load_error(&self, e: wasmtime::Error) -> PluginError {
        PluginError::Load {
            plugin: self.name.clone(),
            message: format!("{e:#}"),
        }
    }

    /// Arms the deadline before a call.
    fn arm(&self, store: &mut Store<State>) {
        let ticks = (self.sandbox.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.data_mut().limiter.denied = false;
    }

    /// Turns a failed call into its typed error.
    fn classify(&self, store: &Store<State>, e: wasmtime::Error) -> PluginError {
        let plugin = self.name.clone();
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            PluginError::Deadline {
                plugin,
                ms: self.sandbox.deadline.as_millis(),
            }
        } else if store.data().limiter.denied {
            PluginError::Memory {
                plugin,
                mib: self.sandbox.memory >> 20,
            }
        } else {
            PluginError::Trap {
                plugin,
                message: format!("{e:#}"),
            }
        }
    }
}

/// The live instance, made on first use and after a failure.
fn live<'a, W>(
    loaded: &Loaded,
    slot: &'a mut Option<(Store<State>, W)>,
    instantiate: impl FnOnce(&mut Store<State>, &Component, &Linker<State>) -> wasmtime::Result<W>,
) -> Result<&'a mut (Store<State>, W), PluginError> {
    if slot.is_none() {
        let mut store = loaded.store();
        loaded.arm(&mut store);
        let inst = instantiate(&mut store, &loaded.component, &loaded.linker)
            .map_err(|e| loaded.load_error(e))?;
        *slot = Some((store, inst));
    }
    slot.as_mut().ok_or_else(|| PluginError::Load {
        plugin: loaded.name.clone(),
        message: "no instance".into(),
    })
}

/// One call on the live instance (made if needed). The plugin's own `err` is `Refused`; a trap, a
/// deadline or a memory-cap hit is classified, and the instance is dropped so the next call gets a
/// fresh one.
fn call<W, T>(
    loaded: &Loaded,
    slot: &mut Option<(Store<State>, W)>,
    instantiate: impl FnOnce(&mut Store<State>, &Component, &Linker<State>) -> wasmtime::Result<W>,
    f: impl FnOnce(&mut Store<State>, &W) -> wasmtime::Result<Result<T, String>>,
) -> Result<T, PluginError> {
    let (store, inst) = live(loaded, slot, instantiate)?;
    loaded.arm(store);
    match f(store, inst) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(PluginError::Refused {
            plugin: loaded.name.clone(),
            message,
        }),
        Err(e) => {
            let err = loaded.classify(store, e);
            *slot = None;
            Err(err)
        }
    }
}

/// A loaded catalog plugin.
pub struct CatalogPlugin {
    loaded: Loaded,
    live: Option<(Store<State>, catalog_world::CatalogPlugin)>,
}

impl CatalogPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    fn instance(
        &mut self,
    ) -> Result<&mut (Store<State>, catalog_world::CatalogPlugin), PluginError> {
        live(&self.loaded, &mut self.live, |s, c, l| {
            catalog_world::CatalogPlugin::instantiate(s, c, l)
        })
    }

    /// Asks for the catalog; `since` is the version the caller has (0: none).
    pub fn fetch(
        &mut self,
        settings: &[(String, String)],
        since: u64,
    ) -> Result<types::CatalogUpdate, PluginError> {
        call(
            &self.loaded,
            &mut self.live,
            |s, c, l| catalog_world::CatalogPlugin::instantiate(s, c, l),
            |store, inst| inst.call_fetch(store, &settings.to_vec(), since),
        )
    }
}

/// A loaded router plugin.
pub struct RouterPlugin {
    loaded: Loaded,
    live: Option<(Store<State>, router_world::RouterPlugin)>,
}

impl RouterPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    fn instance(&mut self) -> Result<&mut (Store<State>, router_world::RouterPlugin), PluginError> {
        live(&self.loaded, &mut self.live, |s, c, l| {
            router_world::RouterPlugin::instantiate(s, c, l)
        })
    }

    /// A gateway's routes for `catalog` in `local_dc`.
    pub fn gateway_routes(
        &mut self,
        settings: &[(String, String)],
        catalog: &types::Catalog,
        local_dc: &str,
    ) -> Result<Vec<types::Route>, PluginError> {
        call(
            &self.loaded,
            &mut self.live,
            |s, c, l| router_world::RouterPlugin::instantiate(s, c, l),
            |store, inst| inst.call_gateway_routes(store, &settings.to_vec(), catalog, local_dc),
        )
    }

    /// The plan of the sidecar fronting `service` in `local_dc`.
    pub fn sidecar_plan(
        &mut self,
        settings: &[(String, String)],
        catalog: &types::Catalog,
        local_dc: &str,
        service: &str,
        proxy_id: Option<&str>,
    ) -> Result<types::SidecarPlan, PluginError> {
        call(
            &self.loaded,
            &mut self.live,
            |s, c, l| router_world::RouterPlugin::instantiate(s, c, l),
            |store, inst| {
                inst.call_sidecar_plan(
                    store,
                    &settings.to_vec(),
                    catalog,
                    local_dc,
                    service,
                    proxy_id,
                )
            },
        )
    }
}

/// A loaded connection hook: one per data-plane core.
pub struct HookPlugin {
    loaded: Loaded,
    live: Option<(Store<State>, hook_world::ConnectionHook)>,
}

impl HookPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// One connection's verdict.
    pub fn decide(
        &mut self,
        settings: &[(String, String)],
        sni: Option<&str>,
        alpn: &[String],
        source: &str,
    ) -> Result<types::Verdict, PluginError> {
        // A hook cannot refuse: its answer is a verdict.
        call(
            &self.loaded,
            &mut self.live,
            |s, c, l| hook_world::ConnectionHook::instantiate(s, c, l),
            |store, inst| {
                inst.call_decide(store, &settings.to_vec(), sni, alpn, source)
                    .map(Ok)
            },
        )
    }
}
