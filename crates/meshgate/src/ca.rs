//! `meshgate ca`: the mesh certificate authority from the command line (see `meshgate_ca`). Files only;
//! the primary datacenter runs `init`, secondaries get an `intermediate`, sidecars get `issue`d leaves.
//! Keys are written 0600 whatever was there before, every file atomically and never through a symbolic
//! link (`meshgate_ca::files`); `--hours` is refused outside its range with a message naming it.

use clap::Subcommand;
use meshgate_ca::{Authority, CaError, LeafRequest, MAX_LEAF_LIFETIME, MIN_LEAF_LIFETIME};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `--hours` limits, from the library's (clap names the flag and the range when refusing a value).
const MIN_HOURS: u64 = MIN_LEAF_LIFETIME.as_secs() / 3600;
const MAX_HOURS: u64 = MAX_LEAF_LIFETIME.as_secs() / 3600;

/// `meshgate ca ...`
#[derive(Subcommand, Debug)]
pub(crate) enum CaCommand {
    /// Create the mesh's root (in the primary datacenter): DIR/{cert,key,chain,roots}.pem.
    Init {
        /// Where to write the authority.
        #[arg(long)]
        out: PathBuf,
        /// Trust domain; a fresh `<uuid>.consul` when not given.
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// Sign an intermediate for a secondary datacenter with an existing authority.
    Intermediate {
        /// The signing authority's directory (the primary's root).
        #[arg(long)]
        ca: PathBuf,
        /// The datacenter the intermediate serves.
        #[arg(long)]
        datacenter: String,
        /// Where to write the intermediate authority.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a service leaf (SPIFFE URI SAN, client + server auth): DIR/{cert,key,roots}.pem.
    Issue {
        /// The signing authority's directory.
        #[arg(long)]
        ca: PathBuf,
        /// Service name.
        #[arg(long)]
        service: String,
        /// The service's datacenter.
        #[arg(long)]
        datacenter: String,
        /// Namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Lifetime in hours, 1 to 8760 (a year: an intermediate's lifetime).
        /// (`-1` is taken as a value, so its refusal names `--hours` too.)
        #[arg(
            long,
            default_value_t = 72,
            allow_negative_numbers = true,
            value_parser = clap::value_parser!(u64).range(MIN_HOURS..=MAX_HOURS)
        )]
        hours: u64,
        /// Where to write the leaf.
        #[arg(long)]
        out: PathBuf,
    },
}

fn done(result: Result<String, CaError>) -> ExitCode {
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate ca: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Issues a leaf from the authority in `ca` into `out`.
pub(crate) fn issue(ca: &Path, req: &LeafRequest, out: &Path) -> Result<String, CaError> {
    let leaf = Authority::load(ca)?.issue(req)?;
    leaf.save(out)?;
    Ok(format!("issued {} into {}", leaf.identity, out.display()))
}

pub(crate) fn run(command: CaCommand) -> ExitCode {
    done(match command {
        CaCommand::Init { out, trust_domain } => {
            Authority::init(trust_domain.as_deref()).and_then(|a| {
                a.save(&out)?;
                Ok(format!(
                    "root for trust domain {} written to {}",
                    a.trust_domain(),
                    out.display()
                ))
            })
        }
        CaCommand::Intermediate {
            ca,
            datacenter,
            out,
        } => Authority::load(&ca)
            .and_then(|root| root.intermediate(&datacenter))
            .and_then(|a| {
                a.save(&out)?;
                Ok(format!(
                    "intermediate for {datacenter} ({}) written to {}",
                    a.trust_domain(),
                    out.display()
                ))
            }),
        CaCommand::Issue {
            ca,
            service,
            datacenter,
            namespace,
            hours,
            out,
        } => issue(
            &ca,
            &LeafRequest {
                service,
                namespace,
                datacenter,
                // In range (the parser's), so no overflow; the library checks again.
                lifetime: Duration::from_secs(hours.saturating_mul(3600)),
            },
            &out,
        ),
    })
}
