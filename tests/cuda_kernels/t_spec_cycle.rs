//! The speculative cycle's small kernels (kernels/elementwise.cu `kiln_spec_feed`,
//! `kiln_spec_accept`) against their CPU twins in `backend::spec_cycle`: exact integer
//! results, so equality.

use crate::harness::*;
use kiln::backend::spec_cycle::{accept, select, tag};
use kiln::backend::verify_step::{segment_words, Segment};
use rand::Rng;

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn spec_feed_writes_each_draft_into_both_id_arrays() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(51);
    // (draft rows, verify rows, feeds): one feed, a batch's worth, more feeds than threads.
    for (nd, nv, nf) in [(3usize, 4usize, 1usize), (32, 40, 24), (700, 800, 600)] {
        let drafts: Vec<i32> = (0..nd).map(|_| g.gen_range(0..1 << 20)).collect();
        let mut dst_rows: Vec<usize> = (0..nv).collect();
        for i in 0..nv {
            dst_rows.swap(i, g.gen_range(i..nv));
        }
        let feeds: Vec<[i32; 2]> = (0..nf).map(|f| [g.gen_range(0..nd) as i32, dst_rows[f] as i32]).collect();
        let ids0: Vec<i32> = (0..nv).map(|_| g.gen()).collect();
        let mtp0: Vec<i32> = (0..nv).map(|_| g.gen()).collect();
        let (mut ids_want, mut mtp_want) = (ids0.clone(), mtp0.clone());
        for f in &feeds {
            ids_want[f[1] as usize] = drafts[f[0] as usize];
            mtp_want[f[1] as usize] = drafts[f[0] as usize];
        }
        let (dd, fd) = (up(&s, &drafts), up(&s, &feeds.iter().flatten().copied().collect::<Vec<i32>>()));
        let (id, md) = (up(&s, &ids0), up(&s, &mtp0));
        e.k.spec_feed(&s, ptr(&s, &dd), ptr(&s, &fd), nf, ptr(&s, &id), ptr(&s, &md)).unwrap();
        assert_eq!(down(&s, &id), ids_want, "ids, {nf} feeds");
        assert_eq!(down(&s, &md), mtp_want, "MTP ids, {nf} feeds");
        // Without MTP ids (NULL) only the step's ids change.
        let id2 = up(&s, &ids0);
        e.k.spec_feed(&s, ptr(&s, &dd), ptr(&s, &fd), nf, ptr(&s, &id2), 0).unwrap();
        assert_eq!(down(&s, &id2), ids_want, "ids without MTP ids");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn spec_accept_equals_its_cpu_twin() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let mut g = rng(52);
    // (sequences, positions): one, a verify graph's 8, the most a cycle takes.
    for (n, p) in [(1usize, 4usize), (8, 4), (5, 2), (256, 4)] {
        // Sequence i feeds 1..=p positions, rows position-major as a verify step lays them.
        let fed: Vec<usize> = (0..n).map(|_| g.gen_range(1..=p)).collect();
        let mut rows = vec![-1i32; n * p];
        let mut r = 0;
        for q in 0..p {
            for i in (0..n).filter(|&i| fed[i] > q) {
                rows[i * p + q] = r;
                r += 1;
            }
        }
        let t = r as usize;
        // Drafts match the previous position's greedy token with probability 0.7.
        let mut ids: Vec<i32> = (0..t).map(|_| g.gen_range(0..50)).collect();
        let greedy: Vec<i32> = (0..t).map(|_| g.gen_range(0..50)).collect();
        for i in 0..n {
            for q in 1..fed[i] {
                if g.gen_bool(0.7) {
                    ids[rows[i * p + q] as usize] = greedy[rows[i * p + q - 1] as usize];
                }
            }
        }
        // A table of every (sequence, length) with 1-3 copies each.
        let (mut table, mut tags) = (Vec::new(), Vec::new());
        for i in 0..n {
            for a in 1..=fed[i] {
                for _ in 0..g.gen_range(1..=3) {
                    table.push(Segment { src: g.gen(), dst: g.gen(), bytes: 16 * g.gen_range(1..100u64) });
                    tags.push(tag(i, a));
                }
            }
        }
        let want_acc: Vec<i32> = accept(&rows, p, &ids, &greedy).into_iter().map(|a| a as i32).collect();
        let want_segs = segment_words(&select(&table, &tags, &want_acc.iter().map(|&a| a as usize).collect::<Vec<_>>()));
        let (idd, gd, rd, td) = (up(&s, &ids), up(&s, &greedy), up(&s, &rows), up(&s, &tags));
        let (acc, segs) = (up(&s, &vec![-9i32; n]), up(&s, &segment_words(&table)));
        e.k.spec_accept(&s, ptr(&s, &idd), ptr(&s, &gd), ptr(&s, &rd), n, p, ptr(&s, &acc), ptr(&s, &segs), ptr(&s, &td), table.len()).unwrap();
        let got_acc = down(&s, &acc);
        println!("spec_accept n={n} p={p}: accepted {:?}...", &got_acc[..n.min(8)]);
        assert_eq!(got_acc, want_acc, "accepted lengths, n={n}");
        assert_eq!(down(&s, &segs), want_segs, "the commit table, n={n}");
    }
}
