//! RFC 862 echo on monoio: thread-per-core runtime, io_uring driver with ownership-passing
//! ("rent") I/O. `FusionDriver` uses io_uring when the kernel allows it and falls back to
//! the epoll-based legacy driver otherwise; the driver chosen is reported on stderr.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(peers::BUF_SIZE);
    loop {
        let (res, b) = stream.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        let (res, b) = stream.write_all(b).await;
        res?;
        buf = b;
        buf.clear();
    }
}

fn main() -> std::io::Result<()> {
    let addr = peers::listen_addr();
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build()?;
    eprintln!(
        "monoio driver: {}",
        match rt {
            monoio::FusionRuntime::Uring(_) => "io_uring",
            monoio::FusionRuntime::Legacy(_) => "legacy (epoll)",
        }
    );
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)?;
        peers::announce(listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(async move {
                        let _ = echo(stream).await; // EOF, reset or broken pipe: drop the connection
                    });
                }
                Err(e) => eprintln!("accept: {e}"),
            }
        }
    })
}
