//! RFC 862 echo on `std::net`: blocking sockets, one OS thread per connection.
//! This peer is the exception to "one thread": thread-per-connection is the point.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; peers::BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
    }
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(peers::listen_addr())?;
    peers::announce(listener.local_addr()?);
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let _ = echo(stream); // EOF, reset or broken pipe: just drop the connection
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}
