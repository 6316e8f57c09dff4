/**
 * Tokens from the command line, against a real appliance process: the token file it creates
 * (mode 0600, the same after a restart), every way the CLI finds the token, a refusal that
 * says where the token is, and a tenant token that cannot touch another tenant's region.
 */
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateToken, stateTokenFile } from '../../src/appliance/auth-token.js';
import { findToken } from '../../src/cli/credentials.js';
import { applianceTokenFile } from '../../src/cli/appliance-command.js';
import { ApplianceProcess, tempDir, type Run } from '../interop/appliance-process.js';
import { memfabricCommand } from '../support/cli.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = memfabricCommand();

/** Runs the real CLI with a clean environment: PATH and HOME, plus `env`. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...CLI, ...args],
      {
        cwd: ROOT,
        timeout: 60_000,
        killSignal: 'SIGKILL',
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr, output: stdout + stderr });
      },
    );
  });
}

test('the appliance process creates its token file (0600), keeps it across a restart, and the CLI finds it', async (t) => {
  const dataDir = tempDir(t);
  const stateDir = tempDir(t);
  const first = await ApplianceProcess.start({ memory: '32MiB', dataDir });
  t.after(() => first.stop());
  const file = join(dataDir, 'admin.token');
  assert.equal(first.tokenFile, file);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const token = readFileSync(file, 'utf8').trim();
  const at = ['--appliance', first.httpUrl];
  const clean = { MEMFABRIC_STATE_DIR: stateDir };

  // No token anywhere: refused, and told where the token is.
  const refused = await cli(['region', 'create', 'x', '--size', '1MiB', ...at], clean);
  assert.equal(refused.code, 2, refused.output);
  assert.match(refused.stderr, /MF_UNAUTHORIZED/);
  assert.ok(refused.stderr.includes(file), `names ${file}: ${refused.stderr}`);
  // Reads from this machine need no token.
  assert.equal((await cli(['region', 'ls', ...at], clean)).code, 0);

  // Every way to give it: --token, MEMFABRIC_TOKEN, --token-file, MEMFABRIC_TOKEN_FILE.
  const ways: Array<[string, string[], Record<string, string>]> = [
    ['a', ['--token', token], clean],
    ['b', [], { ...clean, MEMFABRIC_TOKEN: token }],
    ['c', ['--token-file', file], clean],
    ['d', [], { ...clean, MEMFABRIC_TOKEN_FILE: file }],
  ];
  for (const [name, flags, env] of ways) {
    const made = await cli(['region', 'create', name, '--size', '1MiB', ...at, ...flags], env);
    assert.equal(made.code, 0, `${name}: ${made.output}`);
  }
  // The flag comes before the environment; a wrong token is refused.
  const wrong = await cli(['region', 'rm', 'a', ...at, '--token', generateToken()], {
    ...clean,
    MEMFABRIC_TOKEN: token,
  });
  assert.equal(wrong.code, 2);
  assert.match(wrong.stderr, /not valid.*MF_UNAUTHORIZED/);
  const missing = await cli(['region', 'rm', 'a', ...at, '--token-file', join(stateDir, 'nope')], clean);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /token file .*nope does not exist/);

  await first.stop();
  const second = await ApplianceProcess.start({ memory: '32MiB', dataDir });
  t.after(() => second.stop());
  assert.equal(second.token, token, 'the same token after a restart');
  assert.equal(readFileSync(file, 'utf8').trim(), token);
  const again = await cli(
    ['region', 'create', 'z', '--size', '1MiB', '--appliance', second.httpUrl, '--token-file', file],
    clean,
  );
  assert.equal(again.code, 0, again.output);
});

test('a tenant token from the CLI reaches only its own regions', async (t) => {
  const dir = tempDir(t);
  const tenants = join(dir, 'tenants.json');
  const blue = generateToken();
  const green = generateToken();
  writeFileSync(tenants, JSON.stringify({ blue, green }), { mode: 0o600 });
  const app = await ApplianceProcess.start({ memory: '32MiB', args: ['--tenant-tokens', tenants] });
  t.after(() => app.stop());
  const at = ['--appliance', app.httpUrl];
  const made = await cli(['region', 'create', 'b1', '--size', '1MiB', ...at], { MEMFABRIC_TOKEN: blue });
  assert.equal(made.code, 0, made.output);
  assert.match(made.stdout, /b1\s+1 MiB\s+blue/);
  const mine = await cli(['region', 'ls', '--json', ...at], { MEMFABRIC_TOKEN: green });
  assert.deepEqual(JSON.parse(mine.stdout), [], 'green sees none of blue’s regions');
  const steal = await cli(['region', 'rm', 'b1', ...at], { MEMFABRIC_TOKEN: green });
  assert.equal(steal.code, 2);
  assert.match(steal.stderr, /no region named "b1".*MF_NOT_FOUND/);
  const stats = await cli(['stats', '--json', ...at], { MEMFABRIC_TOKEN: green });
  assert.equal(JSON.parse(stats.stdout).tenant, 'green');
  const wide = await cli(['region', 'migrate', 'b1', '--to', 'http://127.0.0.1:9', ...at], {
    MEMFABRIC_TOKEN: blue,
  });
  assert.equal(wide.code, 2);
  assert.match(wide.stderr, /MF_FORBIDDEN/);
  assert.equal((await app.api('GET', '/v1/regions/b1')).status, 200, 'b1 is still there');
});

test('the token lookup order, and where `memfabric appliance` keeps a token without a data dir', async (t) => {
  const stateDir = tempDir(t);
  const env = { MEMFABRIC_STATE_DIR: stateDir };
  const byPort = stateTokenFile(18080, env);
  assert.equal(byPort, join(stateDir, 'admin-18080.token'));
  assert.equal(await findToken('http://127.0.0.1:18080', {}, env), undefined);
  mkdirSync(stateDir, { recursive: true });
  const portToken = generateToken();
  writeFileSync(byPort, `${portToken}\n`, { mode: 0o600 });
  assert.equal(await findToken('http://127.0.0.1:18080', {}, env), portToken);
  assert.equal(await findToken('http://127.0.0.1:18081', {}, env), undefined, 'keyed by port');
  const fileToken = generateToken();
  const file = join(stateDir, 'other.token');
  writeFileSync(file, fileToken, { mode: 0o600 });
  const envToken = generateToken();
  const flagToken = generateToken();
  const url = 'http://127.0.0.1:18080';
  assert.equal(await findToken(url, { tokenFile: file }, env), fileToken);
  assert.equal(await findToken(url, {}, { ...env, MEMFABRIC_TOKEN_FILE: file }), fileToken);
  assert.equal(await findToken(url, { tokenFile: file }, { ...env, MEMFABRIC_TOKEN: envToken }), envToken);
  assert.equal(
    await findToken(url, { token: flagToken, tokenFile: file }, { ...env, MEMFABRIC_TOKEN: envToken }),
    flagToken,
  );
  await assert.rejects(findToken(url, { token: 'short' }, env), { code: 'MF_INVALID_ARGUMENT' });

  // The appliance command: --token-file, else the data dir (the library's default), else the
  // state-dir file for a fixed port; port 0 without a data dir keeps the token in memory.
  assert.equal(applianceTokenFile({ tokenFile: '/x/t' }, 10880), '/x/t');
  assert.equal(applianceTokenFile({ dataDir: '/d' }, 10880), undefined);
  assert.equal(applianceTokenFile({}, 0), undefined);
  assert.equal(applianceTokenFile({}, 10880), stateTokenFile(10880));
});
