//! `syncflow demo`: the hub on a fresh embedded SQLite file, wired to sandbox
//! systems running in the same process (a Stripe stand-in when the stripe
//! connector is built in, and a JSON "warehouse" receiver), with a few customers,
//! and instructions for seeing a change made in one place appear in the others.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use syncflow_sandbox::salesforce::{SalesforceOptions, SalesforceSandbox};
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};

use crate::config::Config;
use crate::{serve, DbArgs, ServeArgs};

const DEMO_DB: &str = "syncflow-demo.db";
const STRIPE_KEY: &str = "sk_test_demo";
const WEBHOOK_SECRET: &str = "whsec_demo";
const SF_CLIENT: (&str, &str) = ("demo-client", "demo-secret");

pub async fn run(listen: String, mut config: Config) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{DEMO_DB}{suffix}"));
    }
    let warehouse = Receiver::start(None, Duration::ZERO).await;
    let stripe = StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions::default()).await?;
    let with_stripe = syncflow_connectors::KINDS.contains(&"stripe");
    let sf_options = SalesforceOptions {
        client_id: SF_CLIENT.0.into(),
        client_secret: SF_CLIENT.1.into(),
        ..SalesforceOptions::default()
    };
    let salesforce = SalesforceSandbox::start("127.0.0.1:0".parse()?, sf_options).await?;

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
    systems.push_str(&format!(
        "[[systems]]\nname = \"salesforce\"\nkind = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"{}\"\n\
         client_secret = \"{}\"\npoll_interval = \"1s\"\n",
        salesforce.url(),
        SF_CLIENT.0,
        SF_CLIENT.1
    ));
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
        setup(addr, &warehouse, &stripe, &salesforce, with_stripe).await
    });
    setup?;
    hub
}

async fn setup(
    addr: std::net::SocketAddr,
    warehouse: &Receiver,
    stripe: &StripeSandbox,
    salesforce: &SalesforceSandbox,
    with_stripe: bool,
) -> Result<()> {
    let hub_url = format!("http://{addr}");
    if with_stripe {
        stripe.add_webhook("we_demo", &format!("{hub_url}/webhooks/stripe"), WEBHOOK_SECRET);
    }

    let client = reqwest::Client::new();
    let mut seeded = Vec::new();
    for (name, email) in SEED {
        let created: Value = client
            .post(format!("{hub_url}/v1/customers"))
            .json(&json!({"name": name, "email": email}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        seeded.push(created["id"].as_str().unwrap_or_default().to_string());
    }
    // Wait (bounded) until Stripe and Salesforce have them, so the banner can show
    // their real ids.
    let mut stripe_ids: Vec<Option<String>> = vec![None; seeded.len()];
    let mut sf_ids: Vec<Option<String>> = vec![None; seeded.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = |ids: &[Option<String>]| ids.iter().any(Option::is_none);
    while ((with_stripe && missing(&stripe_ids)) || missing(&sf_ids)) && Instant::now() < deadline {
        let list: Value = client.get(format!("{hub_url}/v1/customers")).send().await?.json().await?;
        for (i, id) in seeded.iter().enumerate() {
            let row = list["data"].as_array().and_then(|rows| rows.iter().find(|r| r["id"] == id.as_str()));
            stripe_ids[i] = row.and_then(|r| r["links"]["stripe"]["id"].as_str()).map(str::to_string);
            sf_ids[i] = row.and_then(|r| r["links"]["salesforce"]["id"].as_str()).map(str::to_string);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let systems = Systems {
        warehouse: warehouse.url("/_received"),
        stripe: with_stripe.then(|| stripe.url()),
        salesforce: salesforce.url(),
    };
    println!("{}", banner(&hub_url, &systems, &seeded, &stripe_ids, &sf_ids));
    Ok(())
}

const SEED: [(&str, &str); 3] =
    [("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com"), ("Alan Turing", "alan@example.com")];

/// Where the sandbox systems listen.
struct Systems {
    warehouse: String,
    stripe: Option<String>,
    salesforce: String,
}

/// The text printed once the demo is ready: what is running, what was seeded
/// (with real ids), and what to try, in order.
fn banner(
    hub: &str,
    s: &Systems,
    seeded: &[String],
    stripe_ids: &[Option<String>],
    sf_ids: &[Option<String>],
) -> String {
    let (warehouse, stripe, sf) = (&s.warehouse, s.stripe.clone(), &s.salesforce);
    let mut b = String::new();
    let mut line = |s: &str| {
        b.push_str(s);
        b.push('\n');
    };
    line("");
    line("Syncflow demo: a hub kept in sync with three sandbox systems, all on this machine.");
    line("");
    line(&format!("  hub API              {hub}"));
    if let Some(s) = &stripe {
        line(&format!("  Stripe (sandbox)     {s}"));
    }
    line(&format!("  Salesforce (sandbox) {sf}"));
    line(&format!("  warehouse (sandbox)  {warehouse}"));
    line("");
    let systems =
        if stripe.is_some() { "Stripe, Salesforce and the warehouse" } else { "Salesforce and the warehouse" };
    line(&format!("1. Three customers were created in the hub and delivered to {systems}:"));
    line("");
    line(&format!(
        "     {:<30}  {:<20}  {:<18}  NAME",
        "HUB ID",
        if stripe.is_some() { "STRIPE ID" } else { "" },
        "SALESFORCE ID"
    ));
    for (i, id) in seeded.iter().enumerate() {
        let not_yet = |on: bool| if on { "(not yet)".to_string() } else { String::new() };
        let ext = stripe_ids.get(i).cloned().flatten().unwrap_or_else(|| not_yet(stripe.is_some()));
        let sf_id = sf_ids.get(i).cloned().flatten().unwrap_or_else(|| not_yet(true));
        line(&format!("     {id:<30}  {ext:<20}  {sf_id:<18}  {}", SEED[i].0));
    }
    line("");
    line("   The hub's list shows each customer's Stripe id under \"links\":");
    line(&format!("   curl -s {hub}/v1/customers"));
    if let Some(s) = &stripe {
        line("   The same customers in Stripe, with metadata[syncflow_id] pointing back at the hub:");
        line(&format!("   curl -s -u {STRIPE_KEY}: {s}/v1/customers"));
    }
    line("");
    line(&format!("2. Create a customer in the hub; it reaches {systems} within a second"));
    line("   (the Idempotency-Key makes a retried POST safe: run it twice, get one customer):");
    line(&format!(
        "   curl -s -XPOST {hub}/v1/customers -H 'content-type: application/json' -H 'Idempotency-Key: demo-1' \\\n     \
         -d '{{\"name\":\"Katherine Johnson\",\"email\":\"kj@example.com\"}}'"
    ));
    line(&format!("   curl -s {warehouse}"));
    line("");
    let (first, first_ext) = (seeded.first().cloned().unwrap_or_default(), stripe_ids.first().cloned().flatten());
    match (&stripe, first_ext) {
        (Some(s), Some(cus)) => {
            line(&format!(
                "3. Edit {} in Stripe. Stripe's signed webhook updates the hub, which passes the",
                SEED[0].0
            ));
            line("   edit on to the warehouse but not back to Stripe:");
            line(&format!("   curl -s -u {STRIPE_KEY}: {s}/v1/customers/{cus} -d name='Ada King'"));
        }
        _ => line(&format!("3. Read {}'s whole story (changes, deliveries), in time order:", SEED[0].0)),
    }
    if let Some(contact) = sf_ids.get(1).cloned().flatten() {
        line(&format!("   Or edit {} in Salesforce, as a user there would (the hub polls every second):", SEED[1].0));
        line(&format!(
            "   curl -s -XPATCH {sf}/_sandbox/ui/Contact/{contact} -H 'content-type: application/json' \\\n     \
             -d '{{\"LastName\":\"Hopper-Murray\"}}'"
        ));
    }
    if stripe.is_some() {
        line(&format!("   Then read {}'s whole story (changes, deliveries, the webhook), in time order:", SEED[0].0));
    }
    line(&format!("   curl -s {hub}/v1/customers/{first}/history"));
    let exe = std::env::current_exe().map_or_else(|_| "syncflow".to_string(), |p| p.display().to_string());
    line(&format!("   {exe} history {first} --database-url sqlite:{DEMO_DB}"));
    line("");
    line("4. The transaction table, newest first (status, attempts, remarks), and each system's queue:");
    line(&format!("   curl -s '{hub}/v1/deliveries?limit=10'"));
    line(&format!("   curl -s {hub}/v1/systems"));
    line("");
    line("5. The change log, newest first, and the whole API:");
    line(&format!("   curl -s '{hub}/v1/changes?order=desc&limit=5'"));
    line(&format!("   curl -s {hub}/openapi.json"));
    line("");
    line("Ctrl-C stops the demo. The log below says what the hub does: one line per request,");
    line("and one per delivery that fails, is retried or goes dead.");
    b
}
