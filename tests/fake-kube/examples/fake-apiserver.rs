//! `cargo run --example fake-apiserver -- --kubeconfig PATH`: serves the fake Kubernetes
//! API server on a free loopback port, writes a kubeconfig for it to PATH and runs until
//! killed. Options: `--deny VERB:RESOURCE` (repeatable) to answer 403 for it;
//! `--velero DIR` to install the Velero stand-in (restic repositories and saved objects in
//! DIR), for trying the Velero runbooks.

use fake_kube::{FakeCluster, VeleroOptions};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut kubeconfig: Option<PathBuf> = None;
    let mut deny = Vec::new();
    let mut velero: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = args.next().map(PathBuf::from),
            "--deny" => deny.extend(args.next()),
            "--velero" => velero = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: fake-apiserver --kubeconfig PATH [--deny VERB:RESOURCE]... [--velero DIR]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let Some(path) = kubeconfig else {
        return Err("--kubeconfig PATH is required".into());
    };
    let cluster = FakeCluster::start().await?;
    for d in &deny {
        let (verb, resource) = d.split_once(':').ok_or("--deny takes VERB:RESOURCE")?;
        cluster.deny(verb, resource, None);
    }
    if let Some(dir) = &velero {
        cluster.install_velero(VeleroOptions::new(dir))?;
    }
    cluster.write_kubeconfig(&path)?;
    println!(
        "fake API server on {} (kubeconfig {})",
        cluster.url(),
        path.display()
    );
    // Ctrl-C or SIGTERM: dropping the cluster stops its pods' processes and removes
    // their directories.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(cluster);
    Ok(())
}
