#[tokio::main]
async fn main() {
    let t = std::time::Instant::now();
    let s = sluice_testkit::Sluice::default().start().await.unwrap();
    println!("ready in {:?}: {} {}", t.elapsed(), s.url(), s.database_url());
    let t = std::time::Instant::now();
    let s2 = sluice_testkit::Sluice::default().start().await.unwrap();
    println!("second ready in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    s.stop().await.unwrap();
    println!("stopped in {:?}", t.elapsed());
    drop(s2);
}
