//! Tier budgets for tiers the machine does not have, and a tier given two budgets: the
//! environment's `TIERALLOC_TIER_BUDGET` warns once and keeps no budget (as for every
//! malformed value), and `tiers::set_policy` refuses the policy and changes nothing. Before,
//! both took such a budget and applied it to nothing (`5:1G` on two tiers), and `set_policy`
//! took a tier listed twice as its smaller budget.

use std::process::Command;
use tieralloc::tiers::{self, Policy, PolicyError};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const CHILD_ENV: &str = "TIERALLOC_TEST_BUDGET_INPUT_CHILD";

/// The policy is process-wide: its tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs only in the child: allocates, then prints the policy in force and the tier count.
#[test]
fn child_prints_its_policy() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 100 + i]).collect();
    assert_eq!(v[7][99], 7);
    let p = tiers::policy();
    println!(
        "POLICY near={:?} far={:?} tiers={:?} n_tiers={}",
        p.near_budget,
        p.far_budget,
        p.tier_budgets,
        tieralloc::topology().tiers.len()
    );
}

fn child(budget: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_prints_its_policy",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("TIERALLOC_SIMULATE_NODES", "2,far=1")
        .env("TIERALLOC_TIER_BUDGET", budget)
        .env_remove("TIERALLOC_NODES")
        .env_remove("TIERALLOC_TIERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    let line = stdout
        .lines()
        .find_map(|l| l.find("POLICY ").map(|i| l[i..].to_string()))
        .unwrap_or_else(|| panic!("no policy line:\n{stdout}\n{stderr}"));
    (line, stderr)
}

/// On two tiers (two CPU nodes and a far node), `5:1G` names a tier that does not exist: one
/// warning naming the variable and the value, and no budget at all, not even the well-formed
/// `near:1G` beside it (as for any malformed value: the operator sees the warning and fixes
/// the whole value). A value naming only tiers 0 and 1 is taken as before.
#[test]
fn an_environment_budget_for_a_missing_tier_warns_and_keeps_no_budget() {
    let (line, stderr) = child("near:1G,5:1G");
    assert!(line.contains("n_tiers=2"), "{line}");
    assert!(
        line.contains("near=None") && line.contains("tiers=[]"),
        "budgets kept: {line}\n{stderr}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("TIERALLOC_TIER_BUDGET") && warnings[0].contains("5:1G"),
        "{stderr}"
    );

    let (line, stderr) = child("near:1G,1:2G");
    assert!(
        line.contains("near=Some(1073741824)") && line.contains("tiers=[(1, 2147483648)]"),
        "{line}\n{stderr}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `set_policy` refuses a budget for a tier index this machine lacks (the machine's tier
/// count, not only the crate's limit of 8) and a tier listed twice, and keeps the policy in
/// force.
#[test]
fn set_policy_refuses_missing_and_repeated_tiers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = tieralloc::topology().tiers.len();
    assert!(n >= 1);
    let before = tiers::policy();
    let missing = Policy {
        near_budget: Some(1 << 30),
        tier_budgets: vec![(n, 1 << 30)],
        ..Policy::default()
    };
    assert_eq!(tiers::set_policy(&missing), Err(PolicyError::BadTier(n)));
    let repeated = Policy {
        tier_budgets: vec![(0, 1 << 30), (0, 2 << 30)],
        ..Policy::default()
    };
    assert_eq!(
        tiers::set_policy(&repeated),
        Err(PolicyError::RepeatedTier(0))
    );
    let after = tiers::policy();
    assert_eq!(
        (after.near_budget, after.tier_budgets),
        (before.near_budget, before.tier_budgets)
    );
    // The last tier is fine.
    let last = Policy {
        tier_budgets: vec![(n - 1, 1 << 40)],
        ..Policy::default()
    };
    assert_eq!(tiers::set_policy(&last), Ok(()));
    assert_eq!(tiers::policy().tier_budgets, vec![(n - 1, 1 << 40)]);
    tiers::set_policy(&Policy::default()).unwrap();
}
