//! `syncflow demo`: the hub on a fresh embedded SQLite file, wired to sandbox
//! systems running in the same process (a Stripe stand-in when the stripe
//! connector is built in, and a JSON "warehouse" receiver), with a few customers,
//! and instructions for seeing a change made in one place appear in the others.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};

use crate::config::Config;
use crate::{serve, DbArgs, ServeArgs};

const DEMO_DB: &str = "syncflow-demo.db";
const STRIPE_KEY: &str = "sk_test_demo";
const WEBHOOK_SECRET: &str = "whsec_demo";

pub async fn run(listen: String, mut config: Config) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{DEMO_DB}{suffix}"));
    }
    let warehouse = Receiver::start(None, Duration::ZERO).await;
    let stripe = StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions::default()).await?;
    let with_stripe = syncflow_connectors::KINDS.contains(&"stripe");

    let mut systems = format!(
        "[[systems]]\nname = \"warehouse\"\nkind = \"http\"\nurl = \"{}\"\nentities = [\"customer\", \"invoice\"]\n",
        warehouse.url("/syncflow")
    );
    if with_stripe {
        systems.push_str(&format!(
            "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{STRIPE_KEY}\"\n\
             webhook_secret = \"{WEBHOOK_SECRET}\"\n",
            stripe.url()
        ));
    }
    #[derive(serde::Deserialize)]
    struct Systems {
        systems: Vec<toml::Table>,
    }
    config.systems = toml::from_str::<Systems>(&systems)?.systems;

    let args = ServeArgs {
        db: DbArgs { database_url: Some(format!("sqlite:{DEMO_DB}")) },
        listen: Some(listen),
        api_tokens: Some(String::new()),
        insecure_no_auth: false,
    };
    let (ready, bound) = tokio::sync::oneshot::channel();
    // Same task, not a spawned one: the hub runs while the setup below talks to it.
    let (hub, setup) = tokio::join!(serve(args, config, Some(ready)), async {
        let addr = bound.await.context("the hub did not start")?;
        setup(addr, &warehouse, &stripe, with_stripe).await
    });
    setup?;
    hub
}

async fn setup(
    addr: std::net::SocketAddr,
    warehouse: &Receiver,
    stripe: &StripeSandbox,
    with_stripe: bool,
) -> Result<()> {
    let hub_url = format!("http://{addr}");
    if with_stripe {
        stripe.add_webhook("we_demo", &format!("{hub_url}/webhooks/stripe"), WEBHOOK_SECRET);
    }

    let client = reqwest::Client::new();
    for (name, email) in [
        ("Ada Lovelace", "ada@example.com"),
        ("Grace Hopper", "grace@example.com"),
        ("Alan Turing", "alan@example.com"),
    ] {
        client
            .post(format!("{hub_url}/v1/customers"))
            .json(&json!({"name": name, "email": email}))
            .send()
            .await?
            .error_for_status()?;
    }

    let stripe_lines = if with_stripe {
        format!(
            "\n  Stripe (sandbox)     {s}\n\n\
             # …and in Stripe, with metadata[syncflow_id] pointing back at the hub:\n\
             curl -s -u {STRIPE_KEY}: {s}/v1/customers\n\n\
             # Edit a customer in Stripe (use an id from the list above); the signed webhook\n\
             # updates the hub, which passes it on to the warehouse but not back to Stripe:\n\
             curl -s -u {STRIPE_KEY}: {s}/v1/customers/cus_… -d name='Edited in Stripe'\n",
            s = stripe.url()
        )
    } else {
        String::new()
    };
    println!(
        "\nSyncflow demo is running. Ctrl-C stops it.\n\n  hub API              {hub_url}\n  \
         warehouse (sandbox)  {w}{stripe_lines}\n\
         # Create a customer in the hub:\n\
         curl -s -XPOST {hub_url}/v1/customers -H 'content-type: application/json' \\\n     \
         -d '{{\"name\":\"Katherine Johnson\",\"email\":\"kj@example.com\"}}'\n\n\
         # It reaches the warehouse within a second:\n\
         curl -s {w}\n\n\
         # The transaction table: every delivery, its status and remarks:\n\
         curl -s '{hub_url}/v1/deliveries?limit=10'\n\
         curl -s {hub_url}/v1/systems\n\n\
         # The change log, and the whole API:\n\
         curl -s {hub_url}/v1/changes\n\
         curl -s {hub_url}/openapi.json\n",
        w = warehouse.url("/_received"),
    );
    Ok(())
}
