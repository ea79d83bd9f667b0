// Signing a person in with a Microsoft account: the authorization code
// flow with PKCE, which a single-page app runs itself. The browser goes to
// the identity platform and comes back to /admin/ with a code; this page
// redeems it, with the verifier only it holds, for a token for Flywheel's
// API, kept for this tab as a key is, and a refresh token that renews it
// when Flywheel says it has expired (access tokens last about an hour).

const PENDING = 'flywheel.entra-sign-in';
const RENEWAL = 'flywheel.entra-renewal';

const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));
const redirectUri = () => `${location.origin}/admin/`;

/** The account a Microsoft sign-in's token names (`preferred_username`),
 * for display only (the server checks the token); null for a key. */
export function signedInAs(token) {
  const claims = token?.split('.')[1];
  if (!claims || !token.startsWith('eyJ')) return null;
  try {
    const json = atob(claims.replace(/-/g, '+').replace(/_/g, '/'));
    return JSON.parse(json).preferred_username ?? null;
  } catch {
    return null;
  }
}

/** Sends the browser to the identity platform (`entra` as
 * `GET /admin/api/sign-in` describes it). */
export async function startEntraSignIn(entra) {
  if (!crypto.subtle) throw new Error('Signing in with a Microsoft account needs the console on HTTPS (or on this machine).');
  const verifier = random(32);
  const state = random(16);
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, ...entra }));
  const query = new URLSearchParams({
    client_id: entra.client_id, response_type: 'code', response_mode: 'query',
    redirect_uri: redirectUri(), scope: `${entra.scope} offline_access`, state,
    code_challenge: challenge, code_challenge_method: 'S256',
  });
  location.assign(`${entra.authorize_url}?${query}`);
}

/** On the way back from the identity platform: the token the code is
 * redeemed for; null when this page load is no such return. Throws with
 * the platform's own words when the sign-in failed. */
export async function finishEntraSignIn() {
  const back = new URLSearchParams(location.search);
  if (!back.has('code') && !back.has('error')) return null;
  history.replaceState(null, '', `${location.pathname}${location.hash}`);
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  if (back.has('error')) throw new Error(back.get('error_description') || back.get('error'));
  if (!pending || back.get('state') !== pending.state) throw new Error('This sign-in was not started from this tab; try again.');
  return redeem(pending, {
    grant_type: 'authorization_code', code: back.get('code'),
    redirect_uri: redirectUri(), code_verifier: pending.verifier,
  });
}

/** A new token for the tab's Microsoft sign-in, from its refresh token;
 * null when the tab signed in with a key or cannot renew. */
export async function renewEntraSignIn() {
  const renewal = JSON.parse(sessionStorage.getItem(RENEWAL) || 'null');
  if (!renewal) return null;
  sessionStorage.removeItem(RENEWAL);
  try {
    return await redeem(renewal, { grant_type: 'refresh_token', refresh_token: renewal.refresh_token });
  } catch {
    return null;
  }
}

/** Forgets how to renew the tab's sign-in (signing out). */
export function forgetEntraSignIn() {
  sessionStorage.removeItem(RENEWAL);
}

/** Redeems a grant at the token endpoint: the access token; the refresh
 * token that came with it is kept for the next renewal. */
async function redeem({ token_url, client_id, scope }, grant) {
  const res = await fetch(token_url, {
    method: 'POST',
    body: new URLSearchParams({ client_id, scope: `${scope} offline_access`, ...grant }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.access_token) throw new Error(body.error_description || `The identity platform answered ${res.status}.`);
  if (body.refresh_token) {
    sessionStorage.setItem(RENEWAL, JSON.stringify({ token_url, client_id, scope, refresh_token: body.refresh_token }));
  }
  return body.access_token;
}
