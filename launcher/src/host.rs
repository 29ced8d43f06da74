//! Node 0's launcher hosts the job's rendezvous. It binds before any worker starts, so a
//! taken port is one clear error instead of N workers timing out at the rendezvous.
use anyhow::{Context, Result};
use hist_rendezvous::{Server, ServerHandle, ServerOptions};

use crate::plan::Plan;

/// Binds and starts the rendezvous server when this node hosts it (node 0); returns the
/// running server (serving until dropped) and the port workers must dial.
pub fn host_rendezvous(plan: &Plan) -> Result<(Option<ServerHandle>, u16)> {
    let Some(bind) = &plan.bind_addr else { return Ok((None, plan.master_port)) };
    let addr = format!("{bind}:{}", plan.master_port);
    let opts = ServerOptions::new(plan.world_size(), plan.secret.clone());
    let server = Server::bind(&addr, opts).context("cannot host the rendezvous")?;
    let port = server.local_addr().port();
    Ok((Some(server.start()), port))
}
