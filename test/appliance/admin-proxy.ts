/**
 * An HTTP proxy on loopback in front of an appliance's admin API, for tests that must act at a
 * precise point of a conversation: `hold(method, path)` keeps the next matching answer (already
 * produced by the appliance) until `release()`; `answers` records every answer's status, and
 * `answered` resolves once an answer matches. Bodies are buffered whole (admin calls are small).
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';

export interface AnswerSeen {
  method: string;
  path: string;
  status: number;
}

export interface AdminProxy {
  url: string;
  answers: AnswerSeen[];
  /** Holds the next answer to `method path` until release(); resolves when that answer is held. */
  hold(method: string, path: string): { held: Promise<void>; release: () => void };
  /** Resolves with the first answer (from now on) that `match` accepts. */
  answered(match: (answer: AnswerSeen) => boolean): Promise<AnswerSeen>;
  close(): Promise<void>;
}

export async function adminProxy(target: string): Promise<AdminProxy> {
  const answers: AnswerSeen[] = [];
  const holds: Array<{ method: string; path: string; held: () => void; released: Promise<void> }> = [];
  const waiters: Array<{ match: (answer: AnswerSeen) => boolean; resolve: (answer: AnswerSeen) => void }> =
    [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const upstream = httpRequest(
        new URL(req.url ?? '/', target),
        { method: req.method, headers: req.headers },
        (answer) => {
          const body: Buffer[] = [];
          answer.on('data', (chunk: Buffer) => body.push(chunk));
          answer.on('end', () => {
            const seen = { method: req.method ?? '', path: req.url ?? '', status: answer.statusCode ?? 0 };
            const send = (): void => {
              answers.push(seen);
              for (const waiter of waiters.filter((w) => w.match(seen))) {
                waiters.splice(waiters.indexOf(waiter), 1);
                waiter.resolve(seen);
              }
              res.writeHead(seen.status, answer.headers);
              res.end(Buffer.concat(body));
            };
            const hold = holds.find((h) => h.method === seen.method && h.path === seen.path);
            if (hold === undefined) {
              send();
              return;
            }
            holds.splice(holds.indexOf(hold), 1);
            hold.held();
            void hold.released.then(send);
          });
        },
      );
      upstream.on('error', () => res.destroy());
      upstream.end(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    answers,
    hold(method, path) {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let held!: () => void;
      const heldPromise = new Promise<void>((resolve) => (held = resolve));
      holds.push({ method, path, held, released });
      return { held: heldPromise, release };
    },
    answered(match) {
      return new Promise((resolve) => waiters.push({ match, resolve }));
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
