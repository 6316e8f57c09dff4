/**
 * A TCP proxy on 127.0.0.1 between a primary and its standby, to cut the network the ways it
 * fails: `reset()` closes both sides (what the standby sees of a killed primary), `silence()`
 * stops forwarding in both directions and keeps the sockets open (a partition, or a stopped
 * process: only a heartbeat can tell), and `cutAfter(n)` forwards n more bytes towards the
 * standby and then resets (a cut in the middle of a message); `inject` sends bytes of its own.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';

export class StandbyProxy {
  /** Bytes forwarded from the primary to the standby. */
  forwarded = 0;
  private readonly pairs: Array<{ client: Socket; upstream: Socket }> = [];
  private silent = false;
  private budget = Number.POSITIVE_INFINITY;

  private constructor(
    private readonly server: Server,
    private readonly target: number,
  ) {
    server.on('connection', (client: Socket) => {
      const upstream = connect({ host: '127.0.0.1', port: this.target });
      this.pairs.push({ client, upstream });
      client.on('data', (chunk: Buffer) => {
        if (this.silent || this.budget === 0) return;
        if (chunk.length >= this.budget) {
          // The last bytes reach the standby before its side closes; the primary's is reset.
          this.forwarded += this.budget;
          upstream.end(chunk.subarray(0, this.budget), () => client.destroy());
          this.budget = 0;
          return;
        }
        this.budget -= chunk.length;
        this.forwarded += chunk.length;
        upstream.write(chunk);
      });
      upstream.on('data', (chunk: Buffer) => {
        if (!this.silent) client.write(chunk);
      });
      // While silent, nothing crosses, not even one side closing: that is a partition.
      client.on('error', () => this.silent || upstream.destroy());
      upstream.on('error', () => this.silent || client.destroy());
      client.on('close', () => this.silent || upstream.destroy());
      upstream.on('close', () => this.silent || client.destroy());
    });
  }

  static async start(target: number): Promise<StandbyProxy> {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return new StandbyProxy(server, target);
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  reset(): void {
    this.silent = false;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
  }

  silence(): void {
    this.silent = true;
  }

  /** Sends `bytes` to the standby as if the primary had (garbage, to test the standby). */
  inject(bytes: Buffer): void {
    for (const { upstream } of this.pairs) upstream.write(bytes);
  }

  cutAfter(bytes: number): void {
    this.budget = bytes;
  }

  async close(): Promise<void> {
    this.reset();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
