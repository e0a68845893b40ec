//! RFC 862 echo on compio: single-threaded completion-based runtime on io_uring,
//! ownership-passing buffers (`BufResult`).

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(peers::BUF_SIZE);
    loop {
        let BufResult(res, b) = stream.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        let BufResult(res, b) = stream.write_all(b).await;
        res?;
        buf = b;
        buf.clear(); // `read` fills from the start but never shrinks `len`
    }
}

#[compio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(peers::listen_addr()).await?;
    peers::announce(listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                compio::runtime::spawn(async move {
                    let _ = echo(stream).await; // EOF, reset or broken pipe: drop the connection
                })
                .detach();
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}
