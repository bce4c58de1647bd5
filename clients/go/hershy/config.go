package hershy

import (
	"context"

	"github.com/hershy/hershy/clients/go/hershyv1"
)

// Secret is what anyone may know of a program's secret: never its value.
type Secret = hershyv1.Secret

func (c *Client) config() hershyv1.ProgramConfigServiceClient {
	return hershyv1.NewProgramConfigServiceClient(c.conn)
}

// Rename gives the program a new alias ("" removes it). Aliases are unique per
// user: one of the user's other programs' is refused (codes.AlreadyExists).
func (c *Client) Rename(ctx context.Context, id, alias string) (*Program, error) {
	program, err := c.config().RenameProgram(ctx, &hershyv1.RenameProgramRequest{
		Name: Name(id), Alias: alias,
	})
	return program, wrap(ctx, err)
}

// SetEnv sets and removes environment variables; the next start uses them.
func (c *Client) SetEnv(ctx context.Context, id string, set map[string]string, unset ...string) (*Program, error) {
	program, err := c.config().SetProgramEnv(ctx, &hershyv1.SetProgramEnvRequest{
		Name: Name(id), Set: set, Unset: unset,
	})
	return program, wrap(ctx, err)
}

// SetSecret creates or replaces a secret the program reads at
// /run/secrets/{name}; the next start hands it over. The answer never holds
// the value.
func (c *Client) SetSecret(ctx context.Context, id, name string, value []byte) (*Secret, error) {
	secret, err := c.config().SetSecret(ctx, &hershyv1.SetSecretRequest{
		Parent: Name(id), SecretId: name, Value: value,
	})
	return secret, wrap(ctx, err)
}

// Secrets lists the program's secrets: names, versions and times, never values.
func (c *Client) Secrets(ctx context.Context, id string) ([]*Secret, error) {
	answer, err := c.config().ListSecrets(ctx, &hershyv1.ListSecretsRequest{Parent: Name(id)})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	return answer.GetSecrets(), nil
}

// DeleteSecret removes a secret; a restart takes it away from the program.
func (c *Client) DeleteSecret(ctx context.Context, id, name string) (*Secret, error) {
	secret, err := c.config().DeleteSecret(ctx, &hershyv1.DeleteSecretRequest{
		Name: Name(id) + "/secrets/" + name,
	})
	return secret, wrap(ctx, err)
}
