//! Cost of the stand-in's calls against an in-process simulator daemon, through the
//! project's run-time loader (as every user calls them): one progress round trip, one
//! `state_get` (path lookup + state), and a whole archive (request, receive, begin, end).

use std::path::PathBuf;

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::hal::HsmExtent;
use coordinatool_lustre::{Copytool, HsmProgressFlags, HsmUserAction, Lustreapi};
use coordinatool_sim::server::{Daemon, ServeOptions};
use criterion::{Criterion, criterion_group, criterion_main};

fn api() -> Lustreapi {
    // Benches run from target/<profile>/deps, next to the cdylib of this package.
    let exe = std::env::current_exe().expect("current_exe");
    let so = exe.parent().expect("deps dir").join("liblustreapi.so");
    Lustreapi::load_from(&so).expect("load the stand-in")
}

fn bench(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("lustreapi-bench-{}", std::process::id()));
    let mount = root.join("fs");
    std::fs::create_dir_all(&mount).expect("mount dir");
    let daemon = Daemon::start(&mount, &ServeOptions::default()).expect("daemon");
    let mount: PathBuf = daemon.mount().to_path_buf();
    let api = api();
    daemon.with_state(|cluster, _| {
        let _ = cluster.set_param(0, "mdt.*.hsm.max_requests", "1000");
    });
    let file = mount.join("f");
    std::fs::write(&file, b"bench").expect("file");
    let fid = api.path2fid(&file).expect("path2fid");
    let ct = Copytool::register(&api, &mount, &[], false).expect("register");

    let mut g = c.benchmark_group("lustreapi");
    api.hsm_request(
        &mount,
        HsmUserAction::Archive,
        1,
        HsmRequestFlags::default(),
        &[(fid, HsmExtent::WHOLE_FILE)],
        b"",
    )
    .expect("request");
    let hal = ct.recv().expect("recv");
    let h = ct.action_begin(&hal.items[0], -1, 0, false).expect("begin");
    g.bench_function("action_progress", |b| {
        b.iter(|| {
            h.progress(HsmExtent::new(0, 1), 0, HsmProgressFlags::default())
                .expect("progress")
        })
    });
    h.end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .expect("end");
    g.bench_function("hsm_state_get", |b| {
        b.iter(|| api.hsm_state_get(&file).expect("state"))
    });
    // Remove then archive again (the file is archived here; after the remove an archive is
    // needed again): two requests, each received, begun and ended.
    let cycle = |action: HsmUserAction| {
        api.hsm_request(
            &mount,
            action,
            1,
            HsmRequestFlags::default(),
            &[(fid, HsmExtent::WHOLE_FILE)],
            b"",
        )
        .expect("request");
        let hal = ct.recv().expect("recv");
        let hai = &hal.items[0];
        ct.action_begin(hai, -1, 0, false)
            .expect("begin")
            .end(hai.extent, HsmProgressFlags::default(), 0)
            .expect("end");
    };
    g.bench_function("remove_then_archive_round", |b| {
        b.iter(|| {
            cycle(HsmUserAction::Remove);
            cycle(HsmUserAction::Archive);
        })
    });
    g.finish();
    drop(ct);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, bench);
criterion_main!(benches);
