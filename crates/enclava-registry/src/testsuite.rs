//! The conformance suite every [`Registry`] backend passes — in-memory, Redis and Redis Cluster —
//! so the embedded default and the deployment at scale cannot drift apart. Each case uses its own
//! namespace, so one store serves them all at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::find::{FindQuery, HotHints, MAX_PRUNE, MAX_ROUND_TRIPS, Pruner, find};
use crate::list::{ListQuery, list};
use crate::schema::{DataAccessJson, EnclaveInfoJson, Index, PolicyJson};
use crate::sweep::sweep;
use crate::{Registry, RegistryError};

/// Makes a fresh registry on the backend under test, for the given namespace.
pub type Factory = dyn Fn(&str) -> Arc<dyn Registry> + Send + Sync;

/// Measurements used by the suite.
pub const M1: &str = "aa11";
pub const M2: &str = "bb22";

/// An info JSON for tests.
pub fn info(id: &str, measurement: &str, platform: &str, data: &[(&str, bool)]) -> EnclaveInfoJson {
    EnclaveInfoJson {
        instance_id: id.to_owned(),
        service_name: "enclava".into(),
        platform: platform.into(),
        service_version: "0.0.0".into(),
        policy: PolicyJson { mrenclave: measurement.into(), extra: Default::default() },
        attestation: Vec::new(),
        pubkey: vec![1, 2, 3],
        connection_string: format!("127.0.0.1:{}", 1000 + id.len()),
        data_access: data.iter().map(|(d, hot)| (d.to_string(), DataAccessJson { hot: *hot })).collect(),
        extra: Default::default(),
    }
}

/// Publishes `info` and, when `live`, writes presence as a node would.
pub async fn register(reg: &dyn Registry, info: &EnclaveInfoJson, live: bool) {
    reg.publish(&info.instance_id, &info.to_json(), &info.index_entries()).await.expect("publish");
    if live {
        reg.heartbeat(&info.instance_id).await.expect("heartbeat");
    }
}

fn q(data: &str, measurement: &str, platform: &str, limit: i64, deny: &[&str]) -> FindQuery {
    let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
    FindQuery::new(data, measurement, platform, limit, &deny).expect("valid query")
}

async fn ids(reg: &dyn Registry, query: &FindQuery) -> Vec<String> {
    let out = find(reg, query, None, None).await.expect("find");
    out.live.into_iter().take(query.limit).map(|f| f.info.instance_id).collect()
}

async fn index_ids(reg: &dyn Registry, index: &Index) -> BTreeSet<String> {
    reg.index(index).await.expect("index").into_iter().map(|(id, _)| id).collect()
}

/// Runs every case, concurrently (the TTL cases wait for real expiry).
pub async fn run_all(make: &Factory) {
    let cases = [
        "hb",
        "pub",
        "find",
        "spread",
        "prune",
        "malformed",
        "rtt",
        "sweep",
        "withdraw",
        "list",
        "big",
        "hints",
        "claim",
        "defer",
        "docs",
    ];
    let r: Vec<Arc<dyn Registry>> =
        cases.iter().map(|case| make(&format!("conf{}-{case}", std::process::id()))).collect();
    tokio::join!(
        heartbeat_reports_loss(r[0].as_ref()),
        publish_writes_info_and_indexes(r[1].as_ref()),
        find_semantics(r[2].as_ref()),
        find_spreads_load(r[3].as_ref()),
        find_prunes_the_dead(r[4].as_ref()),
        find_skips_malformed_info(r[5].as_ref()),
        find_round_trips_are_constant(r[6].as_ref()),
        sweep_removes_expired(r[7].as_ref()),
        withdraw_removes_everything(r[8].as_ref()),
        list_pages(r[9].as_ref()),
        find_cost_is_independent_of_index_size(r[10].as_ref()),
        hot_hints_keep_hot_enclaves_first(r[11].as_ref()),
        list_shows_info_under_its_own_key(r[12].as_ref()),
        find_defers_pruning_to_a_pruner(r[13].clone()),
        documents_are_written_only_over_the_version_read(r[14].as_ref()),
    );
}

/// Documents (the pools' shared state) are compare-and-set: a write over a version someone else
/// already replaced changes nothing.
pub async fn documents_are_written_only_over_the_version_read(reg: &dyn Registry) {
    assert_eq!(reg.doc_get("pool:p").await.expect("get"), None);
    assert!(!reg.doc_put("pool:p", 1, b"x").await.expect("put"), "no version 1 yet");
    assert!(reg.doc_put("pool:p", 0, b"first").await.expect("put"));
    assert!(!reg.doc_put("pool:p", 0, b"again").await.expect("put"), "it exists now");
    assert_eq!(reg.doc_get("pool:p").await.expect("get"), Some((1, b"first".to_vec())));
    let binary: Vec<u8> = (0..=255).collect();
    assert!(reg.doc_put("pool:p", 1, &binary).await.expect("put"));
    assert!(!reg.doc_put("pool:p", 1, b"stale").await.expect("put"), "a stale writer loses");
    assert_eq!(reg.doc_get("pool:p").await.expect("get"), Some((2, binary)));
    assert!(reg.doc_delete("pool:p").await.expect("delete"));
    assert!(!reg.doc_delete("pool:p").await.expect("delete"));
    assert_eq!(reg.doc_get("pool:p").await.expect("get"), None);
}

/// Presence lives 3 s; a heartbeat says whether the registry still had it.
pub async fn heartbeat_reports_loss(reg: &dyn Registry) {
    assert!(!reg.heartbeat("n1").await.expect("hb"), "first heartbeat finds no presence");
    assert!(reg.heartbeat("n1").await.expect("hb"), "second heartbeat finds its presence");
    let p = reg.probe(&["n1".into()], false).await.expect("probe");
    let ttl = p[0].presence_ttl.expect("present");
    assert!(ttl <= Duration::from_secs(3) && ttl > Duration::from_millis(2000), "ttl {ttl:?}");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(reg.probe(&["n1".into()], false).await.expect("probe")[0].presence_ttl, None, "expired after 3 s");
    assert!(!reg.heartbeat("n1").await.expect("hb"), "after expiry the heartbeat reports the loss");
}

/// Info and every index entry are written with the seed's values.
pub async fn publish_writes_info_and_indexes(reg: &dyn Registry) {
    let i = info("n1", M1, "sim", &[("acme/gpt2", true), ("acme/bert", false)]);
    register(reg, &i, true).await;
    let probe = reg.probe(&["n1".into()], true).await.expect("probe");
    assert_eq!(EnclaveInfoJson::parse(probe[0].info.as_deref().expect("info")).expect("parses"), i);
    assert_eq!(reg.index(&Index::Platform("sim".into())).await.expect("idx"), vec![("n1".into(), "{}".into())]);
    assert_eq!(reg.index(&Index::Measurement(M1.into())).await.expect("idx"), vec![("n1".into(), "{}".into())]);
    assert_eq!(
        reg.index(&Index::Data("acme/gpt2".into())).await.expect("idx"),
        vec![("n1".into(), format!(r#"{{"hot":true,"mrenclave":"{M1}"}}"#))]
    );
    assert_eq!(
        reg.index(&Index::Data("acme/bert".into())).await.expect("idx"),
        vec![("n1".into(), format!(r#"{{"hot":false,"mrenclave":"{M1}"}}"#))]
    );
    let all: BTreeSet<Index> = reg.indexes().await.expect("indexes").into_iter().collect();
    let want: BTreeSet<Index> = i.index_entries().into_iter().map(|(ix, _)| ix).collect();
    assert_eq!(all, want);
}

/// The seed's step order, filters, limits, hot preference and deny lists.
pub async fn find_semantics(reg: &dyn Registry) {
    register(reg, &info("hot1", M1, "sim", &[("d", true)]), true).await;
    register(reg, &info("cold1", M1, "sim", &[("d", false)]), true).await;
    register(reg, &info("other", M2, "sim", &[("d", false)]), true).await;
    register(reg, &info("tdx1", M2, "tdx", &[("e", false)]), true).await;

    for _ in 0..10 {
        assert_eq!(ids(reg, &q("d", "", "", 1, &[])).await, vec!["hot1"], "hot preferred");
    }
    let all: BTreeSet<String> = ids(reg, &q("d", "", "", 10, &[])).await.into_iter().collect();
    assert_eq!(all, ["hot1", "cold1", "other"].map(String::from).into());
    assert_eq!(ids(reg, &q("d", "", "", 10, &[])).await[0], "hot1", "hot first in a longer answer too");
    let m1: BTreeSet<String> = ids(reg, &q("d", M1, "", 10, &[])).await.into_iter().collect();
    assert_eq!(m1, ["hot1", "cold1"].map(String::from).into(), "filtered by measurement");
    assert!(ids(reg, &q("d", "", "sgx", 10, &[])).await.is_empty(), "platform filters");
    assert_eq!(ids(reg, &q("", M2, "tdx", 10, &[])).await, vec!["tdx1"], "measurement index");
    let denied: BTreeSet<String> = ids(reg, &q("d", M1, "", 10, &["hot1"])).await.into_iter().collect();
    assert_eq!(denied, ["cold1"].map(String::from).into(), "deny list");
    assert!(ids(reg, &q("nothing", "", "", 1, &[])).await.is_empty(), "unknown data: empty, not an error");
    let found = find(reg, &q("d", "", "", 1, &[]), None, None).await.expect("find");
    assert!(found.live[0].hot);
    assert!(found.live[0].presence_ttl <= Duration::from_secs(3));
    assert!(matches!(
        find(reg, &FindQuery { limit: 1, ..Default::default() }, None, None).await,
        Err(RegistryError::Invalid(_))
    ));
}

/// Equal candidates do not always come back in the same order.
pub async fn find_spreads_load(reg: &dyn Registry) {
    for id in ["a", "b", "c"] {
        register(reg, &info(id, M1, "sim", &[("d", false)]), true).await;
    }
    let mut firsts = HashSet::new();
    for _ in 0..60 {
        firsts.insert(ids(reg, &q("d", "", "", 1, &[])).await.remove(0));
    }
    assert_eq!(firsts.len(), 3, "every equal candidate is chosen sometimes: {firsts:?}");
}

/// An absent candidate is skipped, the next one checked, and the absent one removed everywhere;
/// with a pruner, the removal happens after the answer, in a batch.
pub async fn find_prunes_the_dead(reg: &dyn Registry) {
    for i in 0..5 {
        register(reg, &info(&format!("dead{i}"), M1, "sim", &[("d", true), ("x", false)]), false).await;
    }
    register(reg, &info("live", M1, "sim", &[("d", false)]), true).await;
    assert_eq!(ids(reg, &q("d", "", "", 1, &[])).await, vec!["live"], "dead hot ones skipped");
    let out = find(reg, &q("d", "", "", 5, &[]), None, None).await.expect("find");
    assert_eq!(out.live.len(), 1);
    for index in
        [Index::Data("d".into()), Index::Data("x".into()), Index::Measurement(M1.into()), Index::Platform("sim".into())]
    {
        let left = index_ids(reg, &index).await;
        assert!(left.iter().all(|id| !id.starts_with("dead")), "{index:?} still names {left:?}");
    }
}

/// Info someone else wrote badly skips that candidate; the call still answers.
pub async fn find_skips_malformed_info(reg: &dyn Registry) {
    let good = info("good", M1, "sim", &[("d", false)]);
    register(reg, &good, true).await;
    for (id, raw) in [("bad1", "not json"), ("bad2", "{}"), ("bad3", r#"{"instanceId":"zzz"}"#)] {
        let fake = info(id, M1, "sim", &[("d", true)]);
        reg.publish(id, raw, &fake.index_entries()).await.expect("publish");
        reg.heartbeat(id).await.expect("hb");
    }
    reg.remove(&[]).await.expect("empty remove is fine");
    // An index entry that is not JSON at all.
    reg.publish("bad4", &info("bad4", M1, "sim", &[]).to_json(), &[(Index::Data("d".into()), "garbage".into())])
        .await
        .expect("publish");
    reg.heartbeat("bad4").await.expect("hb");
    let out = find(reg, &q("d", "", "", 10, &[]), None, None).await.expect("find never fails on bad data");
    let got: Vec<&str> = out.live.iter().map(|f| f.info.instance_id.as_str()).collect();
    assert_eq!(got, vec!["good"]);
    assert!(out.skipped >= 3, "skipped {}", out.skipped);
}

/// A bounded number of round trips, however many candidates.
pub async fn find_round_trips_are_constant(reg: &dyn Registry) {
    for i in 0..200 {
        register(reg, &info(&format!("n{i:03}"), M1, "sim", &[("d", false)]), i % 10 != 0).await;
    }
    for limit in [1, 5, 50, 1000] {
        let before = reg.round_trips();
        let out = find(reg, &q("d", "", "", limit, &[]), None, None).await.expect("find");
        let trips = reg.round_trips() - before;
        assert!(out.live.len() >= (limit as usize).min(180), "limit {limit}: {} found", out.live.len());
        assert!(trips <= MAX_ROUND_TRIPS, "limit {limit}: {trips} round trips");
    }
    assert_eq!(index_ids(reg, &Index::Data("d".into())).await.len(), 180, "the 20 dead were pruned");
}

/// The sweeper removes every entry of an instance whose presence expired, and nothing else.
pub async fn sweep_removes_expired(reg: &dyn Registry) {
    let dead = info("dead", M1, "sim", &[("d1", false), ("d2", true)]);
    let live = info("live", M2, "sim", &[("d1", false)]);
    register(reg, &dead, false).await;
    register(reg, &live, true).await;
    let report = sweep(reg, None).await.expect("sweep");
    assert_eq!(report.removed, 4, "{report:?}");
    for (index, _) in dead.index_entries() {
        assert!(!index_ids(reg, &index).await.contains("dead"), "{index:?}");
    }
    for (index, _) in live.index_entries() {
        assert!(index_ids(reg, &index).await.contains("live"), "{index:?}");
    }
    assert_eq!(sweep(reg, None).await.expect("sweep").removed, 0, "idempotent");
}

/// A clean shutdown leaves nothing behind.
pub async fn withdraw_removes_everything(reg: &dyn Registry) {
    let i = info("n1", M1, "sim", &[("d", true)]);
    register(reg, &i, true).await;
    let entries: Vec<Index> = i.index_entries().into_iter().map(|(ix, _)| ix).collect();
    reg.withdraw("n1", &entries).await.expect("withdraw");
    assert_eq!(reg.probe(&["n1".into()], true).await.expect("probe")[0], Default::default());
    assert!(reg.indexes().await.expect("indexes").is_empty());
}

/// Listing pages through every instance in id order, with filters.
pub async fn list_pages(reg: &dyn Registry) {
    for i in 0..7 {
        let platform = if i % 2 == 0 { "sim" } else { "tdx" };
        register(reg, &info(&format!("n{i}"), M1, platform, &[("d", false)]), i != 3).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page =
            list(reg, &ListQuery { page_size: 3, after: after.clone(), ..Default::default() }).await.expect("list");
        seen.extend(page.items.iter().map(|l| (l.instance_id.clone(), l.present)));
        after = page.next_after;
        if after.is_none() {
            break;
        }
    }
    let want: Vec<(String, bool)> = (0..7).map(|i| (format!("n{i}"), i != 3)).collect();
    assert_eq!(seen, want);
    let sim = list(reg, &ListQuery { platform: Some("sim".into()), page_size: 100, ..Default::default() })
        .await
        .expect("list");
    let sim: BTreeMap<String, bool> = sim.items.into_iter().map(|l| (l.instance_id, l.present)).collect();
    assert_eq!(sim.len(), 4);
    let by_data = list(
        reg,
        &ListQuery { data: Some("d".into()), platform: Some("tdx".into()), page_size: 100, ..Default::default() },
    )
    .await
    .expect("list");
    assert_eq!(by_data.items.len(), 3);
}

/// Registers `n` instances of `data` (measurement M1) by pipelining them in groups; ids are
/// `{prefix}{i}`, live when `live(i)`, hot when `hot(i)`.
async fn register_many(
    reg: &dyn Registry,
    prefix: &str,
    data: &str,
    n: usize,
    live: impl Fn(usize) -> bool,
    hot: impl Fn(usize) -> bool,
) {
    let infos: Vec<EnclaveInfoJson> =
        (0..n).map(|i| info(&format!("{prefix}{i:05}"), M1, "sim", &[(data, hot(i))])).collect();
    for chunk in infos.chunks(64).zip((0..n).collect::<Vec<_>>().chunks(64)) {
        let (infos, idx) = chunk;
        futures::future::join_all(infos.iter().zip(idx).map(|(i, n)| register(reg, i, live(*n)))).await;
    }
}

/// One call's work depends on `limit` and the dead it meets, not on the size of the index: a
/// large index is sampled, a call prunes at most MAX_PRUNE, and the sweeper removes the rest.
pub async fn find_cost_is_independent_of_index_size(reg: &dyn Registry) {
    register_many(reg, "c", "big", 1000, |i| i % 10 != 0, |_| false).await;
    for _ in 0..5 {
        let before = reg.round_trips();
        let out = find(reg, &q("big", "", "", 1, &[]), None, None).await.expect("find");
        assert_eq!(out.live.len().min(1), 1, "a live one is found");
        assert!(out.live.len() <= 64, "only a sample is probed: {} live checked", out.live.len());
        assert!(reg.round_trips() - before <= MAX_ROUND_TRIPS);
    }
    // An index of nothing but the dead: one call prunes a bounded number and answers empty.
    register_many(reg, "d", "dead", 1000, |_| false, |_| false).await;
    let before = reg.round_trips();
    let out = find(reg, &q("dead", "", "", 1, &[]), None, None).await.expect("find");
    assert!(out.live.is_empty());
    assert!(out.pruned > 0 && out.pruned <= MAX_PRUNE, "pruned {}", out.pruned);
    assert!(reg.round_trips() - before <= MAX_ROUND_TRIPS);
    let left = index_ids(reg, &Index::Data("dead".into())).await.len();
    assert!(left >= 1000 - MAX_PRUNE, "{left} left");
    // The sweeper walks everything in steps and removes the rest.
    let report = sweep(reg, None).await.expect("sweep");
    assert!(report.entries >= left, "{report:?}");
    assert!(index_ids(reg, &Index::Data("dead".into())).await.is_empty());
}

/// A hot enclave among many cold ones is found first once a sweep (or an earlier call) has seen it.
pub async fn hot_hints_keep_hot_enclaves_first(reg: &dyn Registry) {
    register_many(reg, "h", "m", 600, |_| true, |i| i == 317).await;
    let hints = HotHints::new();
    sweep(reg, Some(&hints)).await.expect("sweep");
    assert_eq!(hints.pick("m", 10), vec!["h00317".to_owned()]);
    for _ in 0..10 {
        let out = find(reg, &q("m", "", "", 1, &[]), Some(&hints), None).await.expect("find");
        assert_eq!(out.live[0].info.instance_id, "h00317");
        assert!(out.live[0].hot);
    }
    // It turns cold: the next call learns it and forgets the hint.
    let cold = info("h00317", M1, "sim", &[("m", false)]);
    register(reg, &cold, true).await;
    find(reg, &q("m", "", "", 1, &[]), Some(&hints), None).await.expect("find");
    assert!(hints.pick("m", 10).is_empty());
}

/// Info that claims another instance is not shown under this one.
pub async fn list_shows_info_under_its_own_key(reg: &dyn Registry) {
    let liar = info("n1", M1, "sim", &[("d", false)]);
    let mut claim = liar.clone();
    claim.instance_id = "someone-else".into();
    reg.publish("n1", &claim.to_json(), &liar.index_entries()).await.expect("publish");
    reg.heartbeat("n1").await.expect("hb");
    let page = list(reg, &ListQuery { page_size: 10, ..Default::default() }).await.expect("list");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].instance_id, "n1");
    assert!(page.items[0].info.is_none(), "the claimed info is not shown as n1's");
}

/// With a pruner the answer does not wait for the removal: the dead are handed over and removed in
/// a batch (all of them once the pruner is dropped and its task has finished).
pub async fn find_defers_pruning_to_a_pruner(reg: Arc<dyn Registry>) {
    for i in 0..5 {
        register(reg.as_ref(), &info(&format!("dead{i}"), M1, "sim", &[("d", true)]), false).await;
    }
    register(reg.as_ref(), &info("live", M1, "sim", &[("d", false)]), true).await;
    let (pruner, task) = Pruner::start(reg.clone());
    let before = reg.round_trips();
    let out = find(reg.as_ref(), &q("d", "", "", 1, &[]), None, Some(&pruner)).await.expect("find");
    assert_eq!(out.live[0].info.instance_id, "live");
    assert_eq!(out.pruned, 5);
    assert!(reg.round_trips() - before < MAX_ROUND_TRIPS, "no prune round trip in the call");
    drop(pruner);
    task.await.expect("pruner task");
    let left = index_ids(reg.as_ref(), &Index::Data("d".into())).await;
    assert_eq!(left, ["live".to_owned()].into(), "the dead were removed in the background");
}
