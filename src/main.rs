fn main() {
    print!("{}", defender_operator::api::crds_yaml());
}
