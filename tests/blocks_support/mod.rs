//! Test harness: a temp dir with scripts, an engine over it, and publishers that collect or
//! re-inject block publishes the way the broker will.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moonwire::blocks::mlua::{self, Lua};
use moonwire::blocks::{
    BlockConfig, BlockEngine, BlockEvent, BlockInfo, BlocksConfig, EngineOptions, HostExtension,
    Publisher,
};
use moonwire::pipeline::{Message, Origin, Props};

pub struct Collect(pub Mutex<Vec<Message>>);

impl Collect {
    pub fn new() -> Arc<Self> {
        Arc::new(Collect(Mutex::new(Vec::new())))
    }
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Publisher for Collect {
    fn publish(&self, msg: Message) -> Result<(), String> {
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

/// Re-injects every block publish through `before_publish`, like the broker's stage 1, and
/// collects what passed.
pub struct Loopback {
    pub engine: OnceLock<BlockEngine>,
    pub handle: tokio::runtime::Handle,
    pub seen: Mutex<Vec<Message>>,
}

impl Publisher for Loopback {
    fn publish(&self, msg: Message) -> Result<(), String> {
        self.seen.lock().unwrap().push(msg.clone());
        if let Some(engine) = self.engine.get() {
            let fut = engine.before_publish(msg);
            self.handle.spawn(fut);
        }
        Ok(())
    }
}

/// `__test_sleep(ms)`: an async host function, registered only in tests.
pub struct TestSleep;

impl HostExtension for TestSleep {
    fn name(&self) -> &str {
        "test_sleep"
    }
    fn install(&self, lua: &Lua, _block: &BlockInfo) -> mlua::Result<()> {
        let f = lua.create_async_function(|_, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        })?;
        lua.globals().set("__test_sleep", f)
    }
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("scripts/lib")).unwrap();
        Dir { tmp }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn scripts(&self) -> PathBuf {
        self.path().join("scripts")
    }
    /// Writes `scripts/<name>` and returns its path.
    pub fn script(&self, name: &str, src: &str) -> PathBuf {
        let p = self.scripts().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, src).unwrap();
        p
    }
    pub fn config(&self, blocks: Vec<BlockConfig>) -> BlocksConfig {
        BlocksConfig {
            workers: Some(2),
            scripts_dir: self.scripts(),
            kv_path: self.path().join("data/kv.redb"),
            hot_reload: false,
            blocks,
            ..BlocksConfig::default()
        }
    }
}

pub fn block(name: &str, script: &Path, event: BlockEvent, topics: &[&str]) -> BlockConfig {
    let mut b = BlockConfig::new(name, script, event);
    b.topics = topics.iter().map(|t| t.to_string()).collect();
    b
}

pub fn msg(topic: &str, payload: impl Into<Bytes>) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.into(),
        qos: 1,
        retain: false,
        props: Props::default(),
        origin: Origin {
            client_id: "dev-1".into(),
            username: Some("alice".into()),
            hop: 0,
        },
        received_at: 1_700_000_000_000,
    }
}

pub fn start(cfg: BlocksConfig, publisher: Arc<dyn Publisher>) -> BlockEngine {
    BlockEngine::start_with(
        cfg,
        publisher,
        EngineOptions {
            kv_database: None,
            extensions: vec![Arc::new(TestSleep)],
        },
    )
    .unwrap()
}

/// Polls `cond` until true or `timeout`; returns the final value.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A stand-in for the broker's pipeline: a publish (from a client or a block) goes through
/// before_publish; what passes is "delivered" and handed to after_publish.
pub struct BrokerSim {
    pub engine: OnceLock<BlockEngine>,
    pub handle: tokio::runtime::Handle,
    pub delivered: Mutex<Vec<Message>>,
    pub refused: Mutex<Vec<(Message, moonwire::pipeline::Verdict)>>,
}

impl BrokerSim {
    pub fn new() -> Arc<Self> {
        Arc::new(BrokerSim {
            engine: OnceLock::new(),
            handle: tokio::runtime::Handle::current(),
            delivered: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        })
    }

    /// Runs `msg` through the pipeline and returns the before_publish verdict.
    pub async fn inject(self: &Arc<Self>, msg: Message) -> moonwire::pipeline::Verdict {
        use moonwire::pipeline::Verdict;
        let engine = self.engine.get().expect("engine set").clone();
        let verdict = engine.before_publish(msg.clone()).await;
        let routed = match &verdict {
            Verdict::Pass => Some(msg),
            Verdict::Modify(m) => Some(m.clone()),
            _ => {
                self.refused.lock().unwrap().push((msg, verdict.clone()));
                None
            }
        };
        if let Some(m) = routed {
            self.delivered.lock().unwrap().push(m.clone());
            engine.after_publish(m);
        }
        verdict
    }

    pub fn delivered_on(&self, prefix: &str) -> Vec<Message> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.starts_with(prefix))
            .cloned()
            .collect()
    }
}

pub struct SimPublisher(pub Arc<BrokerSim>);

impl Publisher for SimPublisher {
    fn publish(&self, msg: Message) -> Result<(), String> {
        let me = self.0.clone();
        self.0.handle.spawn(async move { me.inject(msg).await });
        Ok(())
    }
}
