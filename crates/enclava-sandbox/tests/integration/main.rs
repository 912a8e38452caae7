//! End-to-end tests of discovery and key release: the server and nodes in-process, on the in-memory registry, a
//! real `redis-server` and a real 3-master Redis Cluster, each on free loopback ports.

mod bad_requests;
mod discovery;
mod evidence;
mod extend;
mod farm;
mod fed;
mod keys;
mod receipts;
mod reliability;
mod support;
mod ui;
mod wasm;
