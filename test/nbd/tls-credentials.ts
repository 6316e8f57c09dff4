/**
 * TLS credentials made at test time: X.509 with the `openssl` CLI (a CA, a server certificate
 * for 127.0.0.1/localhost, client certificates whose CN names a tenant), laid out as qemu-nbd,
 * nbdkit and libnbd expect; PSK keys from crypto.randomBytes in psktool format. Nothing is
 * checked in: every run has fresh keys in a temporary directory removed after the test.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatPskLine } from '../../src/nbd/index.js';

export interface X509Set {
  /** Server side: ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
  /** Client side for each CN: ca-cert.pem, client-cert.pem, client-key.pem. */
  clientDir(cn: string): string;
  /** A CA nobody used: its ca-cert.pem does not verify the server. */
  otherCaDir: string;
  /** Trusts the server, but its client-cert.pem (CN tenant-b) was signed by the other CA. */
  rogueClientDir: string;
}

function openssl(cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string): void {
  mkdirSync(dir, { recursive: true });
  openssl(dir, [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca-cert.pem',
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

function issue(caDir: string, outDir: string, prefix: string, cn: string, extensions: string): void {
  writeFileSync(join(outDir, `${prefix}.ext`), extensions);
  openssl(outDir, [
    'req',
    ...EC,
    '-keyout',
    `${prefix}-key.pem`,
    '-out',
    `${prefix}.csr`,
    '-subj',
    `/CN=${cn}`,
  ]);
  openssl(outDir, [
    'x509',
    '-req',
    '-in',
    `${prefix}.csr`,
    '-CA',
    join(caDir, 'ca-cert.pem'),
    '-CAkey',
    join(caDir, 'ca-key.pem'),
    '-CAcreateserial',
    '-out',
    `${prefix}-cert.pem`,
    '-days',
    '2',
    '-extfile',
    `${prefix}.ext`,
  ]);
}

/** A fresh CA, server certificate and client certificates for `clientNames`, under `root`. */
/**
 * A self-signed certificate (its own CA) for `subjectAltName`, e.g. 'IP:127.0.0.1', written as
 * cert.pem and key.pem in `dir`: enough for an HTTPS listener and a client given the cert as CA.
 */
export function makeSelfSigned(
  dir: string,
  commonName: string,
  subjectAltName: string,
): { certFile: string; keyFile: string } {
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  openssl(dir, [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-days',
    '2',
    '-subj',
    `/CN=${commonName}`,
    '-addext',
    `subjectAltName=${subjectAltName}`,
  ]);
  return { certFile, keyFile };
}

export function makeX509(root: string, clientNames: readonly string[]): X509Set {
  const caDir = join(root, 'ca');
  makeCa(caDir, 'memfabric test CA');
  const serverDir = join(root, 'server');
  mkdirSync(serverDir);
  cpSync(join(caDir, 'ca-cert.pem'), join(serverDir, 'ca-cert.pem'));
  issue(
    caDir,
    serverDir,
    'server',
    'localhost',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n',
  );
  const clients = new Map<string, string>();
  for (const cn of clientNames) {
    const dir = join(root, `client-${cn}`);
    mkdirSync(dir);
    cpSync(join(caDir, 'ca-cert.pem'), join(dir, 'ca-cert.pem'));
    issue(
      caDir,
      dir,
      'client',
      cn,
      'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n',
    );
    clients.set(cn, dir);
  }
  const otherCaDir = join(root, 'other-ca');
  makeCa(otherCaDir, 'some other CA');
  const rogueClientDir = join(root, 'rogue-client');
  mkdirSync(rogueClientDir);
  cpSync(join(caDir, 'ca-cert.pem'), join(rogueClientDir, 'ca-cert.pem'));
  issue(
    otherCaDir,
    rogueClientDir,
    'client',
    'tenant-b',
    'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n',
  );
  return {
    serverDir,
    otherCaDir,
    rogueClientDir,
    clientDir(cn: string): string {
      const dir = clients.get(cn);
      if (dir === undefined) throw new Error(`no client certificate for ${cn}`);
      return dir;
    },
  };
}

export interface PskSet {
  /** The server's file: every identity. */
  file: string;
  keys: Map<string, Buffer>;
  /** A directory holding keys.psk with only `identity` (what qemu's tls-creds-psk reads). */
  qemuDir(identity: string): string;
  /** A psktool file with only `identity`, for one client (libnbd's tls-psk-file). */
  clientFile(identity: string, key?: Buffer): string;
}

/** Random 32-byte keys for `identities`, written in psktool format under `root`. */
export function makePsk(root: string, identities: readonly string[]): PskSet {
  const keys = new Map(identities.map((id) => [id, randomBytes(32)] as const));
  const file = join(root, 'server.psk');
  writeFileSync(file, [...keys].map(([id, key]) => formatPskLine(id, key)).join('\n') + '\n', {
    mode: 0o600,
  });
  let n = 0;
  const clientFile = (identity: string, key = keys.get(identity)): string => {
    if (key === undefined) throw new Error(`no key for ${identity}`);
    const path = join(root, `client-${++n}.psk`);
    writeFileSync(path, formatPskLine(identity, key) + '\n', { mode: 0o600 });
    return path;
  };
  return {
    file,
    keys,
    clientFile,
    qemuDir(identity: string): string {
      const dir = join(root, `qemu-${++n}`);
      mkdirSync(dir);
      cpSync(clientFile(identity), join(dir, 'keys.psk'));
      return dir;
    },
  };
}

/** A temporary directory removed after the test. */
export function credentialsDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
