//! `GET /v3/client-ids` through `app()`: the registry's holders and refusals, a corrupt
//! registry file reported (not a 500), and the fixed range when the registry is off.

mod serve_support;

use ib_stream::clientid::{ClientIds, IdRanges, IdSettings, Purpose};
use ib_stream::config::{Environment, Settings};
use ib_stream_ipc::ConnState;
use serve_support::*;

fn registry_on(dir: &std::path::Path) -> IdSettings {
    let mut s = Settings::defaults(Environment::Production);
    s.client_id_registry = true;
    s.client_id_registry_dir = Some(dir.to_path_buf());
    IdSettings::of(&s)
}

#[tokio::test]
async fn the_ids_in_use_are_listed_with_their_holders_and_refusals() {
    let reg = tempfile::tempdir().unwrap();
    let ids = ClientIds::new(
        reg.path(),
        "production",
        IdRanges::defaults(Environment::Production),
    );
    assert_eq!(ids.acquire(Purpose::Streaming, "engine").unwrap(), 10);
    assert_eq!(ids.refused(Purpose::Streaming, "engine", 10).unwrap(), 11);
    assert_eq!(ids.acquire(Purpose::Backfill, "backfill").unwrap(), 5);
    let env = Env::new(EnvOpts {
        client_ids: registry_on(reg.path()),
        ..EnvOpts::default()
    })
    .await;
    let _w = env.status_writer(ConnState::Connected, &[]);
    let r = env.get("/v3/client-ids").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["environment"], "production");
    assert_eq!(v["registry"], true);
    assert_eq!(v["engine_client_id"], 7, "from the status region");
    assert_eq!(v["ranges"]["streaming"], serde_json::json!([10, 11]));
    assert_eq!(v["ranges"]["lookup"], serde_json::json!([2, 4]));
    let held: Vec<(i64, &str, &str, bool)> = v["in_use"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_i64().unwrap(),
                l["purpose"].as_str().unwrap(),
                l["holder"].as_str().unwrap(),
                l["alive"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        vec![
            (5, "backfill", "backfill", true),
            (11, "streaming", "engine", true)
        ]
    );
    assert_eq!(v["refused"][0]["id"], 10);
    assert_eq!(env.get("/v3/client-ids?x=1").await.status(), 400);
}

#[tokio::test]
async fn a_corrupt_registry_is_reported_and_the_fixed_range_shown_when_off() {
    let reg = tempfile::tempdir().unwrap();
    std::fs::write(reg.path().join("client-ids.production.json"), b"not json").unwrap();
    let env = Env::new(EnvOpts {
        client_ids: registry_on(reg.path()),
        ..EnvOpts::default()
    })
    .await;
    let r = env.get("/v3/client-ids").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert!(v["error"].as_str().unwrap().contains("is corrupt"), "{v}");
    assert_eq!(v["in_use"], serde_json::json!([]));
    assert_eq!(v["engine_client_id"], serde_json::Value::Null, "no engine");

    let off = Env::new(EnvOpts::default()).await;
    let v = body_json(off.get("/v3/client-ids").await).await;
    assert_eq!(v["registry"], false);
    assert_eq!(
        v["fixed"]["range"],
        serde_json::json!([20, 25]),
        "development's"
    );
}
