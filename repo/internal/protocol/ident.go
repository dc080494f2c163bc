package protocol

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// CheckIdent checks a table or column name given to the library: one
// identifier, or two joined by a dot (schema.table), each a letter or '_'
// followed by letters, digits, '_' or '$', at most 63 bytes (PostgreSQL's
// limit). Names are always quoted in SQL (QuoteIdent), so this is not what
// keeps them safe; it turns a mistake into a clear error at construction
// instead of a confusing one from the database later.
func CheckIdent(name string) error {
	parts := strings.Split(name, ".")
	if name == "" || len(parts) > 2 {
		return fmt.Errorf("%q is not a name or schema.name", name)
	}
	for _, p := range parts {
		if p == "" || len(p) > 63 {
			return fmt.Errorf("%q is not a name or schema.name (empty part, or longer than 63 bytes)", name)
		}
		for i, r := range p {
			letter := r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= 0x80
			if !letter && (i == 0 || !(r >= '0' && r <= '9' || r == '$')) {
				return fmt.Errorf("%q is not a name or schema.name: %q is not allowed (letters, digits, '_' and '$'; not a digit first)", name, r)
			}
		}
	}
	return nil
}

// QuoteIdent quotes a name checked by CheckIdent (schema.table: each part).
func QuoteIdent(name string) string {
	return pgx.Identifier(strings.Split(name, ".")).Sanitize()
}

// QuoteLiteral returns s as an SQL string literal.
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
