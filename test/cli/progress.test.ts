/**
 * The CLI's progress bars: drawn with rate and time left on a terminal, nothing at all
 * elsewhere (scripts and logs see only each command's summary line).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { byteProgress } from '../../src/cli/progress.js';

function stream(tty: boolean): { out: NodeJS.WriteStream; text: () => string } {
  const chunks: Buffer[] = [];
  const out = new PassThrough() as unknown as NodeJS.WriteStream & PassThrough;
  out.on('data', (chunk: Buffer) => chunks.push(chunk));
  Object.assign(out, { isTTY: tty, columns: 160, rows: 40 });
  return { out, text: () => Buffer.concat(chunks).toString('utf8') };
}

test('on a terminal the bar shows bytes done of the total, the rate and the time left', () => {
  const { out, text } = stream(true);
  const bar = byteProgress('rebuilding vectors', 64 * 1024 * 1024, out);
  bar.update(16 * 1024 * 1024);
  bar.update(32 * 1024 * 1024);
  bar.stop();
  const drawn = text();
  assert.match(drawn, /rebuilding vectors \[/);
  assert.match(drawn, /50% \| 32 MiB of 64 MiB \| [\d.]+ \S+\/s \| ETA /);
});

test('off a terminal nothing is written', () => {
  const { out, text } = stream(false);
  const bar = byteProgress('rebuilding vectors', 1000, out);
  bar.update(500);
  bar.stop();
  assert.equal(text(), '');
});
