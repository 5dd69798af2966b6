// A real OpenID provider for the sign-in tests: panva's oidc-provider (from package.json), configured by
// the test through the JSON in OIDC_TEST_CONFIG: {port, client: {...}, users: {login: claims}, jwks}.
// Its development login and consent pages stand in for a company's; any password is accepted for the
// users listed. Prints "ready" once listening; stops on SIGTERM.
import Provider from "oidc-provider";

const config = JSON.parse(process.env.OIDC_TEST_CONFIG);
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: [config.client],
  jwks: config.jwks,
  cookies: { keys: ["test-cookie-key-not-a-secret"] },
  scopes: ["openid", "email", "profile", "groups"],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "given_name", "family_name", "preferred_username"],
    groups: [config.groupsClaim || "groups"],
  },
  // The claims of the granted scopes go into the ID token, as Okta's and Entra's groups claims do.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, id) {
    const user = config.users[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...user }; } };
  },
});
provider.proxy = false;
const server = provider.listen(config.port, "127.0.0.1", () => console.log("ready"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
