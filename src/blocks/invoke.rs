//! One handler invocation, end to end: build the arguments, run the coroutine under its
//! deadline, interpret the return values, and account for it (counters, latency, last error,
//! rate-limited error log). Shared by the workers and the dry run.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use mlua::{MultiValue, Value};

use super::host::Recorder;
use super::host::log::report_failure;
use super::verdict::{self, Outcome};
use super::vm::{BlockVm, FailureKind, ScriptFailure};
use crate::pipeline::Message;

/// The client a connect/subscribe handler is asked about.
pub(crate) struct ClientView<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub peer: Option<SocketAddr>,
    pub cert_subject: Option<&'a str>,
}

fn bad_return(vm: &BlockVm, e: &str) -> ScriptFailure {
    ScriptFailure::error(format!(
        "{}: bad return value from {}: {e}",
        vm.handler_at,
        vm.spec.cfg.event.handler_name()
    ))
}

fn account<T>(
    vm: &BlockVm,
    started: Instant,
    result: &Result<T, ScriptFailure>,
    ok: impl FnOnce(&T),
) {
    let m = vm.spec.metrics();
    m.invocations.fetch_add(1, Relaxed);
    m.latency.observe(started.elapsed());
    match result {
        Ok(v) => ok(v),
        Err(f) => {
            let timeout = f.kind == FailureKind::Timeout;
            if timeout {
                m.timeouts.fetch_add(1, Relaxed);
            } else {
                m.errors.fetch_add(1, Relaxed);
            }
            vm.spec.record.set_error(f.message.clone());
            report_failure(&vm.host, &f.message, timeout);
        }
    }
}

pub(crate) async fn on_publish(
    vm: &BlockVm,
    msg: &Message,
    matches: &[String],
    recorder: Option<Rc<Recorder>>,
) -> Result<Outcome, ScriptFailure> {
    let started = Instant::now();
    let result = async {
        let args = verdict::publish_args(vm.lua(), &vm.strings, msg, &vm.name, matches)
            .map_err(|e| vm.arg_failure(&e))?;
        let values = vm
            .call(args, vm.invocation(msg.origin.hop, recorder))
            .await?;
        let max = vm.host.settings.max_payload;
        match verdict::interpret_publish(values, msg) {
            Ok(Outcome::Modify(m)) if m.payload.len() > max => Err(bad_return(
                vm,
                &format!(
                    "msg.payload of {} bytes is larger than max_payload ({max} bytes)",
                    m.payload.len()
                ),
            )),
            other => other.map_err(|e| bad_return(vm, &e)),
        }
    }
    .await;
    account(vm, started, &result, |o| {
        let m = vm.spec.metrics();
        let c = match o {
            Outcome::Pass => &m.pass,
            Outcome::Modify(_) => &m.modify,
            Outcome::Drop(_) => &m.drop,
            Outcome::Consume => &m.consume,
        };
        c.fetch_add(1, Relaxed);
    });
    result
}

pub(crate) async fn on_interval(
    vm: &BlockVm,
    recorder: Option<Rc<Recorder>>,
) -> Result<(), ScriptFailure> {
    let started = Instant::now();
    let result = async {
        let ctx =
            verdict::ctx_table(vm.lua(), vm.spec.name(), 0, &[]).map_err(|e| vm.arg_failure(&e))?;
        let inv = vm.invocation(0, recorder);
        // Return values of interval handlers carry no meaning.
        vm.call(MultiValue::from_vec(vec![Value::Table(ctx)]), inv)
            .await
            .map(|_| ())
    }
    .await;
    account(vm, started, &result, |_| {
        vm.spec.metrics().pass.fetch_add(1, Relaxed);
    });
    result
}

/// `on_connect(client, ctx)` or, with `filter`, `on_subscribe(client, filter, ctx)`.
/// `Ok(Err(reason))` is a denial.
pub(crate) async fn on_client(
    vm: &BlockVm,
    client: &ClientView<'_>,
    filter: Option<&str>,
) -> Result<Result<(), String>, ScriptFailure> {
    let started = Instant::now();
    let result = async {
        let lua = vm.lua();
        let build = || -> mlua::Result<MultiValue> {
            let c = verdict::client_table(
                lua,
                client.client_id,
                client.username,
                client.peer,
                client.cert_subject,
            )?;
            let ctx = verdict::ctx_table(lua, vm.spec.name(), 0, &[])?;
            let mut args = vec![Value::Table(c)];
            if let Some(f) = filter {
                args.push(Value::String(lua.create_string(f)?));
            }
            args.push(Value::Table(ctx));
            Ok(MultiValue::from_vec(args))
        };
        let args = build().map_err(|e| vm.arg_failure(&e))?;
        let values = vm.call(args, vm.invocation(0, None)).await?;
        verdict::interpret_allow(values, vm.spec.name()).map_err(|e| bad_return(vm, &e))
    }
    .await;
    account(vm, started, &result, |r| {
        let m = vm.spec.metrics();
        match r {
            Ok(()) => m.pass.fetch_add(1, Relaxed),
            Err(_) => m.drop.fetch_add(1, Relaxed),
        };
    });
    result
}
