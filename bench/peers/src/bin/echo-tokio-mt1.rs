//! RFC 862 echo on tokio's multi_thread runtime with one worker thread: the work-stealing
//! scheduler, its I/O driver and its wakeup path, with all the work on that one worker.
//! The accept loop is itself spawned so that it too runs on the worker, not on the main
//! thread (which only waits in `block_on`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; peers::BUF_SIZE];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = echo(stream).await; // EOF, reset or broken pipe: drop the connection
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(peers::listen_addr()).await?;
    peers::announce(listener.local_addr()?);
    tokio::spawn(serve(listener))
        .await
        .expect("accept loop panicked");
    Ok(())
}
