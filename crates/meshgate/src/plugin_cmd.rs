//! `meshgate plugin new|build|test`: the command-line side of meshgate-pluginkit (writing the files, printing
//! what was made and what to do next).

use clap::{Subcommand, ValueEnum};
use meshgate_pluginkit::{build, scaffold, trial, AuthorError, World};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Make a standalone plugin crate: its own copy of this gateway's WIT, a small guest SDK, a working
    /// example and its tests. Builds anywhere, with `rustup target add wasm32-unknown-unknown` only.
    New {
        /// Which kind of plugin.
        #[arg(long, value_enum)]
        world: WorldArg,
        /// The plugin's name (a crate name: lowercase letters, digits, `-`, `_`).
        name: String,
        /// Where to make it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the plugin crate in DIR into a component the gateway loads (`<target>/NAME.wasm`), and
    /// check that it is one.
    Build {
        /// The plugin's crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a built plugin against given inputs, without a gateway or sockets: a hook's decision for each
    /// connection and how they split, a router's routes for a catalog directory and the route each name
    /// gets, a catalog's contents.
    Test {
        /// The component (`meshgate plugin build` made it).
        file: PathBuf,
        /// A setting, as in `config = { key = "value" }` (repeat for more).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A name (SNI) to ask about; connections cycle through them (repeat for more).
        #[arg(long)]
        sni: Vec<String>,
        /// The client address a hook sees.
        #[arg(long, default_value = "127.0.0.1:40000")]
        source: String,
        /// How many connections to simulate (a hook); at least one per name.
        #[arg(long, default_value_t = 1)]
        connections: u64,
        /// A catalog directory (Consul registrations and config entries) for a router.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// The gateway's datacenter.
        #[arg(long, default_value = "dc1")]
        datacenter: String,
        /// The trust domain of the catalog directory.
        #[arg(long, default_value = "11111111-2222-3333-4444-555555555555.consul")]
        trust_domain: String,
        /// A directory the plugin may read (repeat for more).
        #[arg(long = "allow-dir")]
        allow_dirs: Vec<PathBuf>,
    },
}

/// `--world`.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum WorldArg {
    /// Supplies the catalog (`[catalog]`).
    Catalog,
    /// Turns the catalog into routes (`[router]`).
    Router,
    /// Decides per connection (`[hook]`).
    Hook,
}

impl From<WorldArg> for World {
    fn from(w: WorldArg) -> World {
        match w {
            WorldArg::Catalog => World::Catalog,
            WorldArg::Router => World::Router,
            WorldArg::Hook => World::Hook,
        }
    }
}

pub fn run(command: PluginCommand) -> ExitCode {
    let result = match command {
        PluginCommand::New { world, name, dir } => new(world.into(), &name, dir),
        PluginCommand::Build { dir, out } => build::build(&dir, out.as_deref()).map(|b| {
            println!(
                "built {} ({:.1} KB): a {} plugin for meshgate:plugin@{}",
                b.path.display(),
                b.bytes as f64 / 1024.0,
                b.kind.label(),
                scaffold::interface_version()
            );
        }),
        PluginCommand::Test {
            file,
            settings,
            sni,
            source,
            connections,
            catalog,
            datacenter,
            trust_domain,
            allow_dirs,
        } => {
            let settings = match parse_settings(&settings) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("meshgate plugin test: {e}");
                    return ExitCode::from(2);
                }
            };
            let inputs = trial::Inputs {
                settings,
                snis: sni,
                source,
                connections,
                catalog,
                datacenter,
                trust_domain,
                allow_dirs,
            };
            trial::run(&file, &inputs).map(|report| print!("{report}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn new(world: World, name: &str, dir: Option<PathBuf>) -> Result<(), AuthorError> {
    let files = scaffold::files(world, name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(AuthorError::Exists(dir));
    }
    for (rel, text) in &files {
        write(&dir.join(rel), text)?;
    }
    println!(
        "made {} plugin `{name}` in {} (world `{}`, meshgate:plugin@{})\n\nnext:\n  cd {}\n  cargo test\n  meshgate plugin build\n\nthen in the gateway's config:\n  [{}]\n  plugin = \"{}\"",
        world.section(),
        dir.display(),
        world.wit_name(),
        scaffold::interface_version(),
        dir.display(),
        world.section(),
        dir.join("target").join(format!("{name}.wasm")).display(),
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), AuthorError> {
    let io = |source| AuthorError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// `--set key=value` pairs, sorted by key as the gateway hands them over.
fn parse_settings(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for kv in raw {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    out.sort();
    Ok(out)
}
