//! The fake API server against the real kube-rs client (kube 5, k8s-openapi 0.29):
//! discovery, CRUD, selectors, patches, server-side apply, watches, scale, access reviews,
//! faults. Every test is bounded by a timeout.

mod common;

use common::{bounded, client};

use fake_kube::{FakeCluster, FaultAction, FaultRule, ResourceDef};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Discovery};
use serde_json::{Value, json};
use std::time::Duration;

fn cm(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
        .expect("configmap")
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "img:1", "env": [{"name": "A", "value": "1"}]}]}
            }
        }
    }))
    .expect("deployment")
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn discovery_finds_builtin_openshift_and_runtime_crds() {
    let cluster = FakeCluster::start().await.expect("start");
    let client = client(&cluster);
    bounded(async {
        let info = client.apiserver_version().await.expect("version");
        assert_eq!(info.major, "1");
        cluster.register(ResourceDef::new(
            "apps.3scale.net",
            "v1alpha1",
            "apimanagers",
            "APIManager",
            true,
        ));
        let d = Discovery::new(client.clone())
            .run()
            .await
            .expect("discovery");
        let mut kinds = Vec::new();
        for g in d.groups() {
            for (ar, caps) in g.recommended_resources() {
                kinds.push((
                    ar.group.clone(),
                    ar.kind.clone(),
                    caps.scope == discovery::Scope::Namespaced,
                ));
            }
        }
        for (g, k) in [
            ("", "ConfigMap"),
            ("apps", "Deployment"),
            ("apps.openshift.io", "DeploymentConfig"),
            ("apps.3scale.net", "APIManager"),
        ] {
            assert!(
                kinds.iter().any(|(gg, kk, ns)| gg == g && kk == k && *ns),
                "{g}/{k} in {kinds:?}"
            );
        }
        let gvk = GroupVersionKind::gvk("apps.3scale.net", "v1alpha1", "APIManager");
        let (ar, _) = discovery::pinned_kind(&client, &gvk)
            .await
            .expect("pinned kind");
        assert_eq!(ar.plural, "apimanagers");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "t", &ar);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps.3scale.net/v1alpha1", "kind": "APIManager",
            "metadata": {"name": "three"}, "spec": {"wildcardDomain": "example.test"}
        }))
        .expect("object");
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create custom resource");
        assert_eq!(
            api.list(&ListParams::default())
                .await
                .expect("list")
                .items
                .len(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn crud_selectors_conflicts_and_dry_run() {
    let cluster = FakeCluster::start().await.expect("start");
    let api: Api<ConfigMap> = Api::namespaced(client(&cluster), "x");
    bounded(async {
        let pp = PostParams::default();
        let a = api
            .create(
                &pp,
                &cm(
                    "a",
                    json!({"tier": "web", "env": "prod"}),
                    json!({"k": "1"}),
                ),
            )
            .await
            .expect("create a");
        assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
        assert_eq!(a.metadata.generation, Some(1));
        api.create(
            &pp,
            &cm("b", json!({"tier": "db", "env": "dev"}), json!({})),
        )
        .await
        .expect("create b");
        let mut gen_cm = cm("", json!({"tier": "cache"}), json!({}));
        gen_cm.metadata.generate_name = Some("gen-".into());
        let g = api.create(&pp, &gen_cm).await.expect("generateName");
        assert!(
            g.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
        );
        assert_eq!(
            api_code(
                &api.create(&pp, &cm("a", json!({}), json!({})))
                    .await
                    .unwrap_err()
            ),
            409
        );

        let names = |l: kube::core::ObjectList<ConfigMap>| {
            l.items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect::<Vec<_>>()
        };
        let sel = |s: &str| ListParams::default().labels(s);
        assert_eq!(
            names(api.list(&sel("tier=web,env!=dev")).await.expect("list")),
            ["a"]
        );
        assert_eq!(
            names(api.list(&sel("tier in (web,db)")).await.expect("list")),
            ["a", "b"]
        );
        assert_eq!(
            names(api.list(&sel("tier notin (web,db)")).await.expect("list")).len(),
            1
        );
        assert_eq!(
            names(
                api.list(&ListParams::default().fields("metadata.name=b"))
                    .await
                    .expect("list")
            ),
            ["b"]
        );
        let bad = api.list(&sel("tier in web")).await.unwrap_err();
        assert_eq!(api_code(&bad), 400);

        // Update with the current resourceVersion works; with a stale one it conflicts.
        let mut a2 = api.get("a").await.expect("get");
        a2.data = Some([("k".to_string(), "2".to_string())].into());
        let a3 = api.replace("a", &pp, &a2).await.expect("replace");
        assert_ne!(a3.metadata.resource_version, a2.metadata.resource_version);
        let stale = api.replace("a", &pp, &a2).await.unwrap_err();
        assert!(
            matches!(&stale, kube::Error::Api(s) if s.is_conflict()),
            "{stale:?}"
        );

        // Dry run answers without storing.
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry, &cm("ghost", json!({}), json!({})))
            .await
            .expect("dry-run create");
        let e = api.get("ghost").await.unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.is_not_found()),
            "{e:?}"
        );

        let stale_rv = kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        };
        let dp = DeleteParams {
            preconditions: Some(stale_rv),
            ..Default::default()
        };
        let e = api.delete("a", &dp).await.unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.is_conflict()),
            "{e:?}"
        );
        api.delete("a", &DeleteParams::default())
            .await
            .expect("delete");
        let e = api.delete("a", &DeleteParams::default()).await.unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.is_not_found() && s.reason == "NotFound"),
            "{e:?}"
        );
        assert_eq!(api.get_opt("a").await.expect("get_opt"), None);

        // Cluster-scoped resources and all-namespace lists.
        let all: Api<ConfigMap> = Api::all(client(&cluster));
        assert_eq!(
            all.list(&ListParams::default())
                .await
                .expect("list all")
                .items
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn patches_merge_json_strategic_and_apply() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "x");
    let cms: Api<ConfigMap> = Api::namespaced(c, "x");
    bounded(async {
        cms.create(&PostParams::default(), &cm("conf", json!({}), json!({"a": "1", "b": "2"}))).await.expect("create");
        let pp = PatchParams::default();
        let m = cms.patch("conf", &pp, &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await.expect("merge");
        assert_eq!(m.data, Some([("b".to_string(), "2".to_string()), ("c".to_string(), "3".to_string())].into()));

        // JSON patch guarded by a test on the resourceVersion.
        let rv = m.metadata.resource_version.clone().expect("rv");
        let guarded = |rv: &str| -> json_patch::Patch {
            serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "replace", "path": "/data/b", "value": "20"}
            ]))
            .expect("json patch")
        };
        let j = cms.patch("conf", &pp, &Patch::Json::<()>(guarded(&rv))).await.expect("json patch");
        assert_eq!(j.data.as_ref().and_then(|d| d.get("b")).map(String::as_str), Some("20"));
        let e = cms.patch("conf", &pp, &Patch::Json::<()>(guarded(&rv))).await.unwrap_err();
        assert_eq!(api_code(&e), 422);

        // Strategic merge keys containers and env by name.
        deps.create(&PostParams::default(), &deployment("web", 1)).await.expect("create deployment");
        let sp = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "side:1"}
        ]}}}});
        let s = deps.patch("web", &pp, &Patch::Strategic(sp)).await.expect("strategic");
        let pod = s.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert_eq!(pod.containers.len(), 2);
        let env: Vec<String> = pod.containers[0].env.iter().flatten().map(|e| e.name.clone()).collect();
        assert_eq!(env, ["A", "B"]);
        assert_eq!(pod.containers[0].image.as_deref(), Some("img:1"));
        let e = deps.patch("web", &pp, &Patch::Merge(json!("not an object"))).await;
        assert!(e.is_ok() || api_code(&e.unwrap_err()) == 400);

        // Server-side apply creates when missing, conflicts with another manager, force wins.
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "v"}});
        let created = cms.patch("ssa", &PatchParams::apply("runbook"), &Patch::Apply(&applied)).await.expect("apply create");
        assert_eq!(created.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("v"));
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "theirs"}});
        let e = cms.patch("ssa", &PatchParams::apply("operator"), &Patch::Apply(&other)).await.unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.is_conflict()), "{e:?}");
        let forced = cms.patch("ssa", &PatchParams::apply("operator").force(), &Patch::Apply(&other)).await.expect("force");
        assert_eq!(forced.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("theirs"));
        let managers: Vec<String> = forced.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
        assert!(managers.contains(&"operator".to_string()), "{managers:?}");
        let dry = cms.patch("ssa", &PatchParams::apply("runbook").force().dry_run(), &Patch::Apply(&applied)).await.expect("dry");
        assert_eq!(dry.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("v"));
        let live = cms.get("ssa").await.expect("get");
        assert_eq!(live.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("theirs"));
    })
    .await;
}

#[tokio::test]
async fn watch_streams_changes_and_expires_old_versions() {
    let cluster = FakeCluster::start().await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&cluster), "w");
    bounded(async {
        // resourceVersion "0" means "any" (current state), so start from a real version.
        let other: Api<ConfigMap> = Api::namespaced(client(&cluster), "elsewhere");
        other
            .create(
                &PostParams::default(),
                &cm("unrelated", json!({}), json!({})),
            )
            .await
            .expect("create");
        let start = cms
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let stream = cms
            .watch(&WatchParams::default().timeout(10), &start)
            .await
            .expect("watch");
        let mut stream = stream.boxed();
        cms.create(&PostParams::default(), &cm("one", json!({}), json!({})))
            .await
            .expect("create");
        cms.patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "y"}})),
        )
        .await
        .expect("patch");
        cms.delete("one", &DeleteParams::default())
            .await
            .expect("delete");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match stream
                .try_next()
                .await
                .expect("event")
                .expect("stream open")
            {
                WatchEvent::Added(_) => seen.push("ADDED"),
                WatchEvent::Modified(_) => seen.push("MODIFIED"),
                WatchEvent::Deleted(_) => seen.push("DELETED"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["ADDED", "MODIFIED", "DELETED"]);

        // Replaying from the start still works; after compaction it is 410 Expired.
        let replay: Vec<_> = cms
            .watch(&WatchParams::default().timeout(1), &start)
            .await
            .expect("watch")
            .take(3)
            .collect()
            .await;
        assert_eq!(replay.len(), 3);
        cluster.compact();
        let mut old = cms
            .watch(&WatchParams::default().timeout(5), &start)
            .await
            .expect("watch")
            .boxed();
        match old.try_next().await.expect("event") {
            Some(WatchEvent::Error(s)) => assert_eq!(s.code, 410),
            other => panic!("expected a 410 error event, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn scale_deployments_and_deploymentconfigs() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "s");
    bounded(async {
        deps.create(&PostParams::default(), &deployment("web", 1))
            .await
            .expect("create");
        let s = deps.get_scale("web").await.expect("get scale");
        assert_eq!(s.spec.and_then(|s| s.replicas), Some(1));
        assert_eq!(
            s.status.map(|s| s.selector),
            Some(Some("app=web".to_string()))
        );
        let s = deps
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 3}})),
            )
            .await
            .expect("patch scale");
        assert_eq!(s.spec.and_then(|s| s.replicas), Some(3));
        let d = deps.get("web").await.expect("get");
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
        assert_eq!(d.metadata.generation, Some(2));
        let e = deps
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": -1}})),
            )
            .await
            .unwrap_err();
        assert_eq!(api_code(&e), 422);

        let gvk = GroupVersionKind::gvk("apps.openshift.io", "v1", "DeploymentConfig");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "deploymentconfigs");
        let dcs: Api<DynamicObject> = Api::namespaced_with(c.clone(), "s", &ar);
        let dc: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps.openshift.io/v1", "kind": "DeploymentConfig",
            "metadata": {"name": "system-app"},
            "spec": {"replicas": 1, "selector": {"deploymentconfig": "system-app"}, "template": {}}
        }))
        .expect("dc");
        dcs.create(&PostParams::default(), &dc)
            .await
            .expect("create dc");
        let scale: DynamicObject = dcs
            .patch_subresource(
                "scale",
                "system-app",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await
            .expect("scale dc");
        assert_eq!(
            scale.types.as_ref().map(|t| t.api_version.as_str()),
            Some("extensions/v1beta1")
        );
        assert_eq!(scale.data["spec"]["replicas"], json!(0));
        assert_eq!(
            scale.data["status"]["selector"],
            json!({"deploymentconfig": "system-app"})
        );
        // k8s-openapi's Scale rejects the extensions/v1beta1 answer only in shape, not here:
        // the replicas really changed.
        assert_eq!(
            dcs.get("system-app").await.expect("get dc").data["spec"]["replicas"],
            json!(0)
        );
    })
    .await;
}

#[tokio::test]
async fn access_reviews_and_forbidden_verbs() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        cluster.deny("create", "pods/exec", Some("prod"));
        cluster.deny("delete", "configmaps", None);
        let reviews: Api<SelfSubjectAccessReview> = Api::all(c.clone());
        let ask = |verb: &str, resource: &str, sub: &str, ns: &str| -> SelfSubjectAccessReview {
            serde_json::from_value(json!({"spec": {"resourceAttributes": {
                "verb": verb, "resource": resource, "subresource": sub, "namespace": ns
            }}}))
            .expect("review")
        };
        let r = reviews
            .create(
                &PostParams::default(),
                &ask("create", "pods", "exec", "prod"),
            )
            .await
            .expect("review");
        assert!(!r.status.expect("status").allowed);
        let r = reviews
            .create(&PostParams::default(), &ask("get", "pods", "exec", "prod"))
            .await
            .expect("review");
        assert!(r.status.expect("status").allowed);

        let cms: Api<ConfigMap> = Api::namespaced(c, "x");
        cms.create(&PostParams::default(), &cm("keep", json!({}), json!({})))
            .await
            .expect("create");
        let e = cms
            .delete("keep", &DeleteParams::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.is_forbidden()),
            "{e:?}"
        );
        cluster.allow_all();
        cms.delete("keep", &DeleteParams::default())
            .await
            .expect("delete after allow_all");
    })
    .await;
}

#[tokio::test]
async fn injected_faults_reach_the_client() {
    let cluster = FakeCluster::start().await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&cluster), "f");
    bounded(async {
        cluster.add_fault(
            FaultRule::new(FaultAction::Error(500))
                .method("GET")
                .path_contains("/configmaps/a")
                .times(1),
        );
        assert_eq!(api_code(&cms.get("a").await.unwrap_err()), 500);
        assert_eq!(
            api_code(&cms.get("a").await.unwrap_err()),
            404,
            "the rule hit only once"
        );

        cluster.add_fault(
            FaultRule::new(FaultAction::TooManyRequests {
                retry_after_secs: 7,
            })
            .method("POST")
            .times(1),
        );
        let e = cms
            .create(&PostParams::default(), &cm("a", json!({}), json!({})))
            .await
            .unwrap_err();
        assert_eq!(api_code(&e), 429);

        cluster.add_fault(
            FaultRule::new(FaultAction::DropConnection)
                .path_contains("/configmaps/dropped")
                .times(1),
        );
        let e = cms.get("dropped").await.unwrap_err();
        assert!(
            !matches!(e, kube::Error::Api(_)),
            "a dropped connection is not an API answer: {e:?}"
        );

        cluster.add_fault(
            FaultRule::new(FaultAction::Delay(Duration::from_millis(300)))
                .path_contains("/configmaps/slow")
                .times(1),
        );
        let t = std::time::Instant::now();
        let _ = cms.get("slow").await;
        assert!(t.elapsed() >= Duration::from_millis(300));

        // an admission webhook without dry-run support, on dry-run requests only
        cluster.add_fault(
            FaultRule::new(FaultAction::Status {
                code: 400,
                reason: "BadRequest",
                message: "admission webhook \"guard\" does not support dry run".into(),
            })
            .path_contains("dryRun=All"),
        );
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let e = cms
            .create(&dry, &cm("webhooked", json!({}), json!({})))
            .await
            .unwrap_err();
        match &e {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 400);
                assert_eq!(s.reason, "BadRequest");
                assert!(s.message.contains("does not support dry run"), "{s:?}");
            }
            other => panic!("expected a Status, got {other:?}"),
        }
        cms.create(
            &PostParams::default(),
            &cm("webhooked", json!({}), json!({})),
        )
        .await
        .expect("requests without dryRun are served");

        cluster.clear_faults();
        cluster.seed_faults(42);
        cluster.add_fault(FaultRule::new(FaultAction::Error(503)).fraction(0.5));
        let mut failures = 0;
        for _ in 0..40 {
            if cms.list(&ListParams::default()).await.is_err() {
                failures += 1;
            }
        }
        assert!((8..=32).contains(&failures), "{failures} of 40 failed");
        assert!(cluster.faults_injected() >= 8);
    })
    .await;
}

#[tokio::test]
async fn bad_input_is_a_status_400() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let req = http::Request::post("/api/v1/namespaces/x/configmaps")
            .header("content-type", "application/json")
            .body(b"{not json".to_vec())
            .expect("request");
        let e = c.request::<Value>(req).await.unwrap_err();
        assert_eq!(api_code(&e), 400);
        let req = http::Request::patch("/api/v1/namespaces/x/configmaps/a")
            .header("content-type", "text/plain")
            .body(b"{}".to_vec())
            .expect("request");
        assert_eq!(api_code(&c.request::<Value>(req).await.unwrap_err()), 415);
        let req = http::Request::get("/apis/nope/v1/things")
            .body(Vec::new())
            .expect("request");
        assert_eq!(api_code(&c.request::<Value>(req).await.unwrap_err()), 404);

        // Malformed bodies and parameters of every kind answer a Status, never a panic.
        let cm = br#"{"metadata":{"name":"a"}}"#.to_vec();
        let req = http::Request::post("/api/v1/namespaces/x/configmaps")
            .body(cm)
            .expect("request");
        c.request::<Value>(req).await.expect("create");
        let a = "/api/v1/namespaces/x/configmaps/a";
        let cases: Vec<(http::Method, String, &str, &[u8], u16)> = vec![
            (
                http::Method::PATCH,
                a.into(),
                "application/json-patch+json",
                br#"{"op":"x"}"#,
                400,
            ),
            (
                http::Method::PATCH,
                format!("{a}?fieldManager=m"),
                "application/apply-patch+yaml",
                b"- a",
                400,
            ),
            (
                http::Method::PATCH,
                format!("{a}?fieldManager=m"),
                "application/apply-patch+yaml",
                b": : :",
                400,
            ),
            (
                http::Method::PATCH,
                a.into(),
                "application/apply-patch+yaml",
                b"data: {}",
                422,
            ),
            (
                http::Method::PATCH,
                a.into(),
                "application/merge-patch+json",
                b"[1]",
                400,
            ),
            (http::Method::PUT, a.into(), "application/json", b"[1]", 400),
            (
                http::Method::PUT,
                a.into(),
                "application/json",
                br#"{"metadata":5}"#,
                400,
            ),
            (
                http::Method::GET,
                "/api/v1/namespaces/x/configmaps?watch=1&resourceVersion=abc".into(),
                "",
                b"",
                400,
            ),
            (
                http::Method::GET,
                "/api/v1/namespaces/x/configmaps?labelSelector=a%20in%20(b".into(),
                "",
                b"",
                400,
            ),
            (
                http::Method::DELETE,
                a.into(),
                "application/json",
                b"garbage",
                400,
            ),
            (
                http::Method::POST,
                "/api/v1/namespaces/x/configmaps".into(),
                "application/json",
                br#"{"metadata":{}}"#,
                422,
            ),
            (
                http::Method::POST,
                "/api/v1/namespaces/x/configmaps".into(),
                "application/vnd.kubernetes.protobuf",
                b"k8s",
                415,
            ),
            (
                http::Method::PUT,
                "/api/v1/namespaces/x/configmaps".into(),
                "application/json",
                b"{}",
                405,
            ),
        ];
        for (method, path, ct, body, want) in cases {
            let mut req = http::Request::builder().method(method.clone()).uri(&path);
            if !ct.is_empty() {
                req = req.header("content-type", ct);
            }
            let req = req.body(body.to_vec()).expect("request");
            let e = c.request::<Value>(req).await.unwrap_err();
            assert_eq!(api_code(&e), want, "{method} {path} {ct}");
        }
    })
    .await;
}

#[tokio::test]
async fn runtime_watcher_and_await_condition_work() {
    use kube::runtime::wait::{await_condition, conditions};
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "r");
    bounded(async {
        let waiter = tokio::spawn(await_condition(
            cms.clone(),
            "late",
            |o: Option<&ConfigMap>| {
                o.and_then(|c| c.data.as_ref())
                    .and_then(|d| d.get("ready"))
                    .is_some_and(|v| v == "yes")
            },
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        cms.create(
            &PostParams::default(),
            &cm("late", json!({}), json!({"ready": "no"})),
        )
        .await
        .expect("create");
        cms.patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ready": "yes"}})),
        )
        .await
        .expect("patch");
        let got = waiter.await.expect("join").expect("condition");
        assert_eq!(
            got.and_then(|c| c.data)
                .and_then(|d| d.get("ready").cloned())
                .as_deref(),
            Some("yes")
        );

        let uid = cms
            .get("late")
            .await
            .expect("get")
            .metadata
            .uid
            .expect("uid");
        let (gone, ()) = tokio::join!(
            await_condition(cms.clone(), "late", conditions::is_deleted(&uid)),
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cms.delete("late", &DeleteParams::default())
                    .await
                    .expect("delete");
            }
        );
        gone.expect("deleted");
    })
    .await;
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave() {
    let cluster = FakeCluster::start().await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&cluster), "sel");
    bounded(async {
        cms.create(
            &PostParams::default(),
            &cm("c", json!({"role": "db"}), json!({})),
        )
        .await
        .expect("create");
        let rv = cms
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let mut w = cms
            .watch(&WatchParams::default().labels("role=db").timeout(10), &rv)
            .await
            .expect("watch")
            .boxed();
        let relabel = |role: &str| Patch::Merge(json!({"metadata": {"labels": {"role": role}}}));
        cms.patch("c", &PatchParams::default(), &relabel("web"))
            .await
            .expect("leave");
        cms.patch("c", &PatchParams::default(), &relabel("web2"))
            .await
            .expect("still out");
        cms.patch("c", &PatchParams::default(), &relabel("db"))
            .await
            .expect("enter");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match w.try_next().await.expect("event").expect("open") {
                WatchEvent::Added(_) => seen.push("ADDED"),
                WatchEvent::Modified(_) => seen.push("MODIFIED"),
                WatchEvent::Deleted(_) => seen.push("DELETED"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["DELETED", "ADDED"]);
    })
    .await;
}

#[tokio::test]
async fn namespaces_strict_mode_and_cascading_delete() {
    use k8s_openapi::api::core::v1::Namespace;
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    let nss: Api<Namespace> = Api::all(c.clone());
    let cms: Api<ConfigMap> = Api::namespaced(c, "team");
    bounded(async {
        cluster.require_namespaces(true);
        let e = cms
            .create(&PostParams::default(), &cm("a", json!({}), json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.is_not_found()),
            "{e:?}"
        );
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("ns");
        nss.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        cms.create(&PostParams::default(), &cm("a", json!({}), json!({})))
            .await
            .expect("create in namespace");
        nss.delete("team", &DeleteParams::default())
            .await
            .expect("delete namespace");
        assert!(
            cluster.object("", "configmaps", "team", "a").is_none(),
            "objects go with their namespace"
        );
    })
    .await;
}

#[tokio::test]
async fn direct_store_writes_are_seen_by_clients_and_watches() {
    let cluster = FakeCluster::start().await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&cluster), "d");
    bounded(async {
        let rv = cms
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let mut w = cms
            .watch(&WatchParams::default().timeout(10), &rv)
            .await
            .expect("watch")
            .boxed();
        let stored = cluster
            .upsert(
                "",
                "configmaps",
                "d",
                json!({"metadata": {"name": "seed"}, "data": {"a": "1"}}),
            )
            .expect("upsert");
        assert_eq!(stored["metadata"]["generation"], 1);
        let again = cluster
            .upsert(
                "",
                "configmaps",
                "d",
                json!({"metadata": {"name": "seed"}, "data": {"a": "2"}}),
            )
            .expect("upsert");
        assert_eq!(again["metadata"]["uid"], stored["metadata"]["uid"]);
        assert_eq!(again["metadata"]["generation"], 2);
        assert_eq!(
            cms.get("seed")
                .await
                .expect("get")
                .data
                .and_then(|d| d.get("a").cloned())
                .as_deref(),
            Some("2")
        );
        assert_eq!(cluster.objects("", "configmaps", Some("d")).len(), 1);
        assert!(cluster.remove("", "configmaps", "d", "seed"));
        assert!(!cluster.remove("", "configmaps", "d", "seed"));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match w.try_next().await.expect("event").expect("open") {
                WatchEvent::Added(_) => seen.push("ADDED"),
                WatchEvent::Modified(_) => seen.push("MODIFIED"),
                WatchEvent::Deleted(_) => seen.push("DELETED"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["ADDED", "MODIFIED", "DELETED"]);
        assert!(
            cluster
                .upsert("", "nonexistent", "d", json!({"metadata": {"name": "x"}}))
                .is_none()
        );
    })
    .await;
}
