/**
 * The admin API's access rules as an appliance starts: finds or makes the admin token (the
 * order is in auth-token.ts and docs/appliance.md "Security") and reads the tenant tokens.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { invalidArgument } from '../errors.js';
import type { ApplianceAuthOptions } from './appliance.js';
import { AdminAuth } from './auth.js';
import {
  ADMIN_TOKEN_FILE_NAME,
  TENANT_TOKENS_FILE_NAME,
  checkToken,
  generateToken,
  loadOrCreateTokenFile,
  readTenantTokens,
  tenantTokenMap,
} from './auth-token.js';

export interface LoadedAuth {
  auth: AdminAuth;
  token: string;
  /** Undefined when the token lives in memory only. */
  tokenFile: string | undefined;
}

export async function loadAdminAuth(
  options: { auth?: ApplianceAuthOptions; dataDir?: string },
  logger: Logger | undefined,
): Promise<LoadedAuth> {
  const auth = options.auth ?? {};
  if (auth.readAccess !== undefined && auth.readAccess !== 'open' && auth.readAccess !== 'token') {
    throw invalidArgument(
      `auth.readAccess must be 'open' or 'token', not ${JSON.stringify(auth.readAccess)}`,
    );
  }
  const { token, tokenFile } = await adminToken(auth, options.dataDir, logger);
  const tenantTokens = await tenantTokensOf(auth, options.dataDir, logger);
  const rules = new AdminAuth({
    adminToken: token,
    ...(tokenFile !== undefined ? { adminTokenFile: tokenFile } : {}),
    ...(tenantTokens ? { tenantTokens } : {}),
    ...(auth.readAccess ? { readAccess: auth.readAccess } : {}),
  });
  if (tenantTokens && tenantTokens.size > 0) {
    logger?.info({ tenants: [...tenantTokens.keys()] }, 'tenant tokens loaded');
  }
  return { auth: rules, token, tokenFile };
}

async function adminToken(
  auth: ApplianceAuthOptions,
  dataDir: string | undefined,
  logger: Logger | undefined,
): Promise<{ token: string; tokenFile: string | undefined }> {
  if (auth.token !== undefined)
    return { token: checkToken(auth.token, 'the admin token'), tokenFile: undefined };
  const path = auth.tokenFile ?? (dataDir ? join(dataDir, ADMIN_TOKEN_FILE_NAME) : undefined);
  if (path === undefined) return { token: generateToken(), tokenFile: undefined };
  const file = await loadOrCreateTokenFile(path);
  if (file.created) logger?.info({ file: file.path }, 'admin token created');
  if (file.looseMode !== undefined) {
    logger?.warn(
      { file: file.path, mode: file.looseMode.toString(8) },
      'the admin token file is readable by other users; chmod 600 it',
    );
  }
  return { token: file.token, tokenFile: file.path };
}

async function tenantTokensOf(
  auth: ApplianceAuthOptions,
  dataDir: string | undefined,
  logger: Logger | undefined,
): Promise<Map<string, string> | undefined> {
  if (typeof auth.tenantTokens === 'object') return tenantTokenMap(auth.tenantTokens, 'auth.tenantTokens');
  // An explicit file must exist; the data dir's tenants.json is optional.
  const path = auth.tenantTokens ?? (dataDir ? join(dataDir, TENANT_TOKENS_FILE_NAME) : undefined);
  if (path === undefined) return undefined;
  const read = await readTenantTokens(path, auth.tenantTokens === undefined);
  if (read?.looseMode !== undefined) {
    logger?.warn(
      { file: path, mode: read.looseMode.toString(8) },
      'the tenant tokens file is readable by other users; chmod 600 it',
    );
  }
  return read?.tokens;
}
