//! Shared by the kube-rs tests of the fake: a client for a fake cluster and
//! a time bound for every test.

#![allow(dead_code)]

use fake_kube::FakeCluster;
use kube::{Client, Config};
use std::future::Future;
use std::time::Duration;

/// Runs `f`, failing the test past 30 s.
pub async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took longer than 30 s")
}

/// A kube-rs client for `cluster`, namespace `default`.
pub fn client(cluster: &FakeCluster) -> Client {
    let mut config = Config::new(cluster.url().parse().expect("url"));
    config.default_namespace = "default".into();
    // Faults must reach the test, not be retried away by kube's own retry layer.
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).expect("client")
}
