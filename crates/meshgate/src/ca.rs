//! `meshgate ca`: the mesh certificate authority from the command line (see `meshgate_ca`). Files only;
//! the primary datacenter runs `init`, secondaries get an `intermediate`, sidecars get `issue`d leaves.

use clap::Subcommand;
use meshgate_ca::{Authority, CaError, LeafRequest};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
        /// Lifetime in hours.
        #[arg(long, default_value_t = 72)]
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
                lifetime: Duration::from_secs(hours.saturating_mul(3600)),
            },
            &out,
        ),
    })
}
