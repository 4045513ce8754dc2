//! `tandem demo`, the README's first command, runs to a PASS verdict: a
//! verified workload, a SIGKILL under the crash checker, recovery, and a
//! check that no acknowledged write was lost.

use std::time::Duration;

use tandem_tests::{run_tandem_timeout, Scratch};

#[test]
fn demo_passes() {
    let scratch = Scratch::new("demo");
    let dir = scratch.path.join("work");
    let dir_text = dir.display().to_string();
    let (code, stdout, stderr) =
        run_tandem_timeout(&["demo", "--seconds", "1", "--dir", &dir_text], Duration::from_secs(240))
            .expect("tandem demo finished within 240 s");
    assert_eq!(code, 0, "tandem demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    assert!(stdout.contains("every acknowledged write is there"), "{stdout}");
}
