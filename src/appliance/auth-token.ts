/**
 * Admin tokens on disk: where they live and how they are made.
 *
 * An appliance's admin token is a bearer secret (32 random bytes, base64url). It is created at
 * first start with mode 0600 and re-used on later starts, so the CLI and scripts keep working
 * across restarts. Creation is atomic: the token is written and fsynced into a private temporary
 * file which is then hard-linked to its final name. link(2) fails with EEXIST when the name is
 * taken, so two appliances racing for one file both end up with the same, complete token, and
 * nobody ever reads a half-written one.
 *
 * Where the file is (first that applies; the same order as docs/appliance.md "Security"):
 *   1. a file named explicitly (`--token-file`, `auth.tokenFile`);
 *   2. `<dataDir>/admin.token` when the appliance has a data directory;
 *   3. from the CLI, an appliance on a fixed HTTP port without a data directory uses
 *      `<stateDir>/admin-<port>.token`, which `memfabric region …` finds by the port of its
 *      `--appliance` URL. stateDir is $MEMFABRIC_STATE_DIR, else $XDG_STATE_HOME/memfabric,
 *      else ~/.local/state/memfabric, created with mode 0700.
 * Otherwise (a library appliance on port 0 without a data directory) the token lives in memory
 * only: `appliance.adminToken`.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../errors.js';

export const ADMIN_TOKEN_FILE_NAME = 'admin.token';
export const TENANT_TOKENS_FILE_NAME = 'tenants.json';
/** Random bytes in a generated token (256 bits). */
export const TOKEN_BYTES = 32;
/** Tokens shorter than this are refused: a guessable bearer token is no protection. */
export const TOKEN_CHARS_MIN = 16;
export const TOKEN_CHARS_MAX = 512;
const TOKEN_PATTERN = /^[\x21-\x7e]+$/;

/** A new admin token: 32 random bytes, base64url (43 characters). */
export function generateToken(): string {
  return randomBytes(TOKEN_BYTES).toString('base64url');
}

/** Checks a token's form (printable ASCII without spaces, 16-512 characters); `what` names it. */
export function checkToken(token: unknown, what: string): string {
  if (
    typeof token !== 'string' ||
    token.length < TOKEN_CHARS_MIN ||
    token.length > TOKEN_CHARS_MAX ||
    !TOKEN_PATTERN.test(token)
  ) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `${what} must be ${TOKEN_CHARS_MIN}-${TOKEN_CHARS_MAX} printable characters without spaces ` +
        `(generate one with: openssl rand -base64 32)`,
    );
  }
  return token;
}

/** The per-user directory for tokens of appliances that have no data directory. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MEMFABRIC_STATE_DIR) return env.MEMFABRIC_STATE_DIR;
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, 'memfabric');
  return join(homedir(), '.local', 'state', 'memfabric');
}

/** Where the CLI keeps the token of an appliance on HTTP port `port` without a data directory. */
export function stateTokenFile(port: number, env: NodeJS.ProcessEnv = process.env): string {
  return join(stateDir(env), `admin-${port}.token`);
}

export interface TokenFile {
  token: string;
  path: string;
  /** True when this call created the file. */
  created: boolean;
  /** Set when an existing file is readable by group or others (worth a warning). */
  looseMode?: number;
}

/**
 * Reads the token in `path`, or creates the file (mode 0600, atomically) with a new token.
 * The directory is created with mode 0700 if missing.
 */
export async function loadOrCreateTokenFile(path: string): Promise<TokenFile> {
  const existing = await readTokenFile(path);
  if (existing) return existing;
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const token = generateToken();
  const temporary = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    // The umask may only take bits away; chmod makes the mode exactly 0600 whatever it is.
    await handle.chmod(0o600);
    await handle.writeFile(`${token}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await link(temporary, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
      await unlink(temporary).catch(() => undefined);
      throw fileError(path, 'create', error);
    }
    // Someone else created it first: theirs is complete (it was linked whole), use it.
    await unlink(temporary).catch(() => undefined);
    const theirs = await readTokenFile(path);
    if (theirs) return theirs;
    throw fileError(path, 'read', error);
  }
  await unlink(temporary).catch(() => undefined);
  await syncDirectory(dirname(path));
  return { token, path, created: true };
}

/** The token in an existing file, or undefined if there is no file. */
export async function readTokenFile(path: string): Promise<TokenFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fileError(path, 'read', error);
  }
  const token = checkToken(text.trim(), `the token in ${path}`);
  const mode = (await stat(path)).mode & 0o777;
  return { token, path, created: false, ...(mode & 0o077 ? { looseMode: mode } : {}) };
}

/**
 * Tenant tokens: a JSON object `{ "tenant": "token", … }`. Tenants are region tenants (1-64
 * letters, digits, '.', '_', '-'); tokens follow checkToken and must all differ. Returns
 * undefined when `optional` and the file does not exist.
 */
export async function readTenantTokens(
  path: string,
  optional = false,
): Promise<{ tokens: Map<string, string>; looseMode?: number } | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (optional && (error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fileError(path, 'read', error);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new MemfabricError(
      ErrorCodes.CORRUPT_FILE,
      `${path} is not JSON; it must be an object of tenant names to tokens, like {"team-a": "…"}`,
      { cause: error },
    );
  }
  const tokens = tenantTokenMap(parsed, path);
  const mode = (await stat(path)).mode & 0o777;
  return { tokens, ...(mode & 0o077 ? { looseMode: mode } : {}) };
}

export const TENANT_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
/** Tenant tokens one appliance accepts at most (each request compares against all of them). */
export const TENANT_TOKENS_MAX = 1024;

/** Validates a tenant → token object (from a file named `source`, or from code). */
export function tenantTokenMap(value: unknown, source: string): Map<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `${source} must be an object of tenant names to tokens, like {"team-a": "…"}`,
    );
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > TENANT_TOKENS_MAX) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `${source} names ${entries.length} tenants; at most ${TENANT_TOKENS_MAX} are accepted`,
    );
  }
  const tokens = new Map<string, string>();
  const seen = new Set<string>();
  for (const [tenant, token] of entries) {
    if (!TENANT_PATTERN.test(tenant)) {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `${source}: tenant ${JSON.stringify(tenant)} must be 1-64 letters, digits, '.', '_' or '-'`,
      );
    }
    checkToken(token, `${source}: the token of tenant ${tenant}`);
    if (seen.has(token as string)) {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `${source}: two tenants have the same token; give each tenant its own`,
      );
    }
    seen.add(token as string);
    tokens.set(tenant, token as string);
  }
  return tokens;
}

async function syncDirectory(path: string): Promise<void> {
  // The new name must survive a crash too; some file systems refuse to fsync a directory.
  const handle = await open(path, constants.O_RDONLY).catch(() => undefined);
  if (!handle) return;
  await handle.sync().catch(() => undefined);
  await handle.close();
}

function fileError(path: string, what: 'read' | 'create', cause: unknown): MemfabricError {
  const code = (cause as NodeJS.ErrnoException).code ?? 'error';
  return new MemfabricError(
    ErrorCodes.INVALID_ARGUMENT,
    `cannot ${what} the token file ${path} (${code}); check that the path is right and that this user may ${what} it`,
    { cause },
  );
}
